/* Recovery at startup (io/recover.c): what persistence kept, rebuilt
 * into the shards before they run. */
#ifndef KITE_IO_RECOVER_H
#define KITE_IO_RECOVER_H

#include "io/shard-t.h"

/* Before the shards start: reads persistence_location (kite's logs, or
 * Mosquitto's database on first start), rebuilds sessions, queues and
 * retained messages into the shards, writes a fresh generation of logs
 * and removes the old ones. 0, or -1 when starting would drop data the
 * user asked to keep (the log says exactly why). */
int recover_start(struct broker *b);

/* Waits for what recovery still frees while the shards serve (its
 * tables); before the broker frees the state they refer to. */
void recover_stop(void);

#endif
