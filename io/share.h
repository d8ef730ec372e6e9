/* Shared subscriptions (io/share.c): $share/GROUP/FILTER. */
#ifndef KITE_IO_SHARE_H
#define KITE_IO_SHARE_H

#include <stdbool.h>
#include <stdint.h>

#include "io/session-t.h"
#include "io/shard-t.h"

struct held_ack;
struct msg;
struct persist_ticket;

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
