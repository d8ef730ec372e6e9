/* A client connection (io/conn.c): transport bytes in, MQTT packets
 * dispatched to the handlers, the wire queue out, and its close. Kernel
 * TLS is io/ktls.h, WebSockets io/wsconn.h. */
#ifndef KITE_IO_CONN_H
#define KITE_IO_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/codec.h"
#include "io/conn-t.h"
#include "io/session-t.h"
#include "io/shard-t.h"

/* What the connection layer asks of the layers above it: the handler of
 * each packet type, and what a connection's input, end and held acks
 * mean to bridges, sessions, routing and persistence. Each of those calls
 * down into this layer, so it calls them through this table, registered
 * once by the broker before the shards start. */
struct conn_upcalls {
	const packet_handler *handlers; /* [16], by packet type */
	bool (*bridge_on_packet)(struct conn *c,
				 const struct mqtt_fixed_header *h,
				 const uint8_t *body);
	void (*bridge_on_tls_ready)(struct conn *c);
	void (*bridge_on_close)(struct conn *c);
	bool (*persist_gated)(const struct conn *c);
	void (*persist_will)(struct session *ss);
	void (*session_timer_at)(struct shard *s, uint64_t at_ms);
	void (*session_on_disconnect)(struct shard *s, struct session *ss);
	bool (*route_publish)(struct shard *s, struct msg *m);
	void (*route_retained)(struct shard *s, struct session *ss,
			       const char *filter, uint16_t len,
			       uint8_t granted_qos, uint32_t sub_id);
};
void conn_set_upcalls(const struct conn_upcalls *up);
/* Runs the registered handler of h->type (a bridge's connection takes
 * the client's PUBLISH and acknowledgement handlers). */
int conn_handle(struct conn *c, const struct mqtt_fixed_header *h,
		const uint8_t *body, size_t len);

/* Feeds received bytes (ciphertext on a TLS connection). */
void conn_on_data(struct conn *c, const uint8_t *data, size_t len);
/* Feeds MQTT bytes; decodes and dispatches every complete packet. */
void conn_on_plain(struct conn *c, const uint8_t *data, size_t len);
/* Hands over the connection's buffered input (and its charge): the
 * caller frees it. NULL when there is none. */
uint8_t *conn_take_input(struct conn *c, uint32_t *len);
void conn_queue_ctrl(struct conn *c, const uint8_t *bytes, size_t len);
/* An acknowledgement: after any that still wait (held), else at once. */
void conn_queue_ack(struct conn *c, const uint8_t *bytes, size_t len);
/* A PUBLISH to this client; qos/retain/dup as they go on the wire. */
/* False (and nothing queued) when the message cannot go to this client:
 * expired, larger than its maximum packet size, or the queue is full. */
/* mount_point of c's listener: points *b at "mount" + *b in a malloc'd
 * buffer returned in *owned (free it after use); no mount point leaves
 * both alone. -1 when out of memory or longer than a topic may be. */
int conn_mount(const struct conn *c, struct mqtt_bytes *b, char **owned);
bool conn_queue_publish(struct conn *c, struct msg *m, const struct deliv *d,
			bool dup, uint16_t pid);
void conn_mark_dirty(struct conn *c);
void conn_flush(struct conn *c);
/* Frees the shard's pooled send contexts (shard teardown); _trim, at
 * each tick, those that sat unused since the last one. */
void conn_pools_free(struct shard *s);
void conn_pools_trim(struct shard *s);
void conn_on_send_done(struct conn *c, int res);
/* Closes: reason for the log; send_will decides the will message. */
void conn_close(struct conn *c, const char *reason, bool send_will);
void conn_close_after_flush(struct conn *c, const char *reason);
/* After every event (completion, cross-shard item, tick), with no fan-out
 * or session walk in progress: publishes the wills of the connections
 * closed during it and ends their sessions. */
void conn_settle(struct shard *s);
/* A session about to be freed leaves the ending list. */
void conn_forget_ending(struct session *ss);
void conn_on_closed(struct conn *c);
/* Shuts the socket down both ways; requests on it then complete. */
void conn_shutdown(struct conn *c);
void conn_send_record(struct conn *c, uint8_t record_type,
		      const uint8_t *bytes, size_t len);
void conn_free(struct conn *c);
const char *conn_peer_str(const struct conn *c, char *buf, size_t len);
const char *conn_client_id(const struct conn *c);
/* The flood filter's view of the client: a strike for a source that
 * failed before or at CONNECT; an allow entry after a good CONNECT. */
void conn_strike(struct conn *c);
void conn_allow(struct conn *c);
/* The peer is blocked by the flood filter: asked for clients behind a
 * proxy, whose own packets the XDP program never sees. */
bool conn_blocked(struct conn *c);
/* Closes the connection for a protocol violation: logged with the peer and
 * reason; MQTT 5 clients first get DISCONNECT with the reason code. */
void conn_protocol_error(struct conn *c, uint8_t rc, const char *why);

/* c's rarely needed part (struct conn_rare), allocated on first use;
 * NULL when out of memory. */
struct conn_rare *conn_rare(struct conn *c);

/* True while a SUBACK/UNSUBACK of c waits (an ack after it waits too). */
static inline bool conn_holds_acks(const struct conn *c)
{
	return c->rare && c->rare->held_acks;
}

/* A SUBACK/UNSUBACK that leaves only when every home shard it waits for
 * confirmed (conn.c). conn_hold_ack queues one (waiting for its caller);
 * conn_held_ack_expect adds a confirmation to wait for;
 * conn_held_ack_set gives the packet; conn_release_ack counts one
 * confirmation down. */
struct held_ack *conn_hold_ack(struct conn *c, size_t cap);
void conn_held_ack_expect(struct held_ack *h);
void conn_held_ack_set(struct held_ack *h, const uint8_t *bytes, size_t len);
/* Retained messages for filter, to be looked up right after h's SUBACK
 * leaves; false when out of memory. */
bool conn_held_ack_retained(struct held_ack *h, const char *filter,
			    uint16_t len, uint8_t granted_qos, uint32_t sub_id);
void conn_release_ack(struct conn *c, struct held_ack *h);
/* The ack of a SUBSCRIBE/UNSUBSCRIBE: through `held` if it waits, else
 * straight onto the wire. */
void conn_send_ack(struct conn *c, struct held_ack *held, const uint8_t *bytes,
		   size_t len);

#endif
