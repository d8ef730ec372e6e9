/* Shared subscriptions (io/share.c): $share/GROUP/FILTER. */
#ifndef KITE_IO_SHARE_H
#define KITE_IO_SHARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "acl/acl.h"
#include "io/session-t.h"
#include "io/shard-t.h"

struct held_ack;
struct msg;
struct persist_ticket;

/* What shared subscriptions ask of the layers above them: delivery to
 * the member a group picked (the session layer, which itself calls down
 * here to join and leave groups) and the cluster's interest in a group.
 * Registered once by the broker before the shards start. */
struct share_upcalls {
	void (*session_deliver)(struct session *ss, struct msg *m,
				const struct deliv *d);
	bool (*session_may)(struct session *ss, const char *topic, size_t len,
			    enum acl_access access);
	void (*cluster_share)(struct broker *b, const char *key, uint16_t len,
			      bool add);
};
void share_set_upcalls(const struct share_upcalls *up);

bool share_parse(const char *filter, uint16_t len, const char **key,
		 uint16_t *key_len);
unsigned share_home(const struct broker *b, const char *key, uint16_t len);
/* Join/leave a group; returns true when the group's home is another shard
 * and the change is in flight: pass `held` to have it counted down. */
struct held_ack;
bool share_subscribe(struct session *ss, const char *key, uint16_t len,
		     uint8_t qos, uint32_t sub_id, struct held_ack *held);
bool share_unsubscribe(struct session *ss, const char *key, uint16_t len,
		       struct held_ack *held);
void share_route(struct shard *s, void *group, struct msg *m,
		 struct persist_ticket *t);
void share_on_item(struct shard *s, uint8_t kind, void *op);
/* Cluster: NATS gave this node the message for group key (homed on s):
 * one member gets it. Takes over the reference. */
void share_route_remote(struct shard *s, const char *key, uint16_t len,
			struct msg *m);
void share_free_all(struct shard *s);
void share_op_discard(void *op);

#endif
