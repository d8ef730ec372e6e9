/* The Prometheus listener (io/metrics.c, protocol metrics). */
#ifndef KITE_IO_METRICS_H
#define KITE_IO_METRICS_H

#include <stdint.h>

#include "io/shard-t.h"

struct scrape;
void metrics_on_accept(struct shard *s, unsigned li, int fd);
void metrics_on_cqe(struct shard *s, uint32_t id, uint32_t gen, int res);
/* Each tick: deadlines of slow scrapers. */
void metrics_tick(struct shard *s);
/* After the shard's ring is gone: what scrapes were left is freed. */
void metrics_fini(struct shard *s);

#endif
