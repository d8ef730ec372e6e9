/* Packet handlers (io/handle_*.c), one file per MQTT packet type: the
 * top of the connection path. conn.c dispatches to them by type through
 * the table the broker registers with it (conn_upcalls). */
#ifndef KITE_IO_HANDLE_H
#define KITE_IO_HANDLE_H

#include <stddef.h>
#include <stdint.h>

#include "core/codec.h"
#include "io/conn-t.h"
#include "io/shard-t.h"

struct msg;

/* The handler of each packet type a client may send (handle.c), for
 * conn_upcalls; NULL for the others. */
extern const packet_handler handle_table[16];
int handle_connect(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len);
int handle_publish(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len);
int handle_ack(struct conn *c, const struct mqtt_fixed_header *h,
	       const uint8_t *body, size_t len);
int handle_subscribe(struct conn *c, const struct mqtt_fixed_header *h,
		     const uint8_t *body, size_t len);
int handle_unsubscribe(struct conn *c, const struct mqtt_fixed_header *h,
		       const uint8_t *body, size_t len);
int handle_pingreq(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len);
int handle_disconnect(struct conn *c, const struct mqtt_fixed_header *h,
		      const uint8_t *body, size_t len);
/* handle_publish.c: routes m (its reference goes) and sends `ack` (PUBACK
 * or PUBCOMP; 0: none) for pid once what it acknowledges is durable. */
void publish_route(struct conn *c, struct msg *m, uint8_t ack, uint16_t pid);

/* handle_connect.c: finishing a CONNECT, possibly on another shard. */
/* On the session's shard: takes over a connection from another shard. */
void connect_adopt(struct shard *s, struct conn *c);
/* On the accepting shard: its recv has stopped, hand the conn over. */
void connect_handoff_ready(struct shard *s, struct conn *c);
/* Cluster: c's CONNACK waited for its session's messages from another
 * node (cluster_session_fetch); they are in ss now, or did not come. */
struct session;
void connect_resume(struct shard *s, struct conn *c, struct session *ss);

#endif
