/* Routing (io/route.c): a message to every session that subscribed,
 * on this shard and the others. */
#ifndef KITE_IO_ROUTE_H
#define KITE_IO_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "io/session-t.h"
#include "io/shard-t.h"

struct msg;
struct persist_ticket;

/* What routing asks of the layer above it: the cluster, which routes
 * what other nodes publish through here, takes this node's messages.
 * Registered once by the broker before the shards start. */
struct route_upcalls {
	void (*cluster_publish)(struct shard *s, const struct msg *m,
				struct persist_ticket *t);
};
void route_set_upcalls(const struct route_upcalls *up);

/* Routes a new message from this shard: retained store, global trie,
 * other shards, local fan-out. Takes over the caller's reference. Returns
 * false when no subscription anywhere matched (MQTT 5 reason 0x10). */
bool route_publish(struct shard *s, struct msg *m);
/* Local fan-out of a message that reached this shard; t (may be NULL)
 * travels with share forwards. */
void route_local(struct shard *s, struct msg *m, struct persist_ticket *t);
/* route_publish for a message whose acknowledgement waits for durability
 * (t from persist_ticket_begin, or NULL). */
bool route_publish_t(struct shard *s, struct msg *m, struct persist_ticket *t);
/* A message from another node of the cluster (one reference): routed on
 * this node only, to every shard with a match. */
void route_remote(struct shard *s, struct msg *m);
/* Retained messages matching filter, to one session (on subscribe). */
void route_retained(struct shard *s, struct session *ss, const char *filter,
		    uint16_t len, uint8_t granted_qos, uint32_t sub_id);

#endif
