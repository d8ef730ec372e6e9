/* Bridges: kite as an MQTT client of another broker (Mosquitto's
 * `connection` blocks).
 *
 * A bridge is owned by one shard (bridge i by shard i % shards) and runs
 * on its io_uring like any connection. Its local side is a session that
 * never ends: it subscribes to the `out` patterns, so routing, the
 * inflight window and the bounded offline queue (max_queued_messages,
 * max_queued_bytes) are the ones every client has, and what the remote
 * acknowledges leaves the queue through the ordinary PUBACK/PUBCOMP
 * path. Its remote side is an outgoing connection whose PUBLISHes are
 * published locally like a client's, topics mapped by the prefixes. */
#ifndef KITE_BRIDGE_H
#define KITE_BRIDGE_H

#include <stdbool.h>
#include <stdint.h>

struct shard;
struct conn;
struct session;
struct msg;
struct deliv;
struct mqtt_fixed_header;
struct mqtt_bytes;

/* On the shard thread, once its ring runs: creates the bridges it owns
 * and starts connecting. */
void bridge_start(struct shard *s);
/* Each tick: reconnect timers, keepalive pings, notifications. */
void bridge_tick(struct shard *s);
/* The completion of a bridge's connect (id: bridge index on s). */
void bridge_on_connect_cqe(struct shard *s, uint32_t id, uint32_t gen,
			   int res);
/* After the shard's loop: frees what the bridges own (their sessions are
 * freed with the shard's). */
void bridge_free_all(struct shard *s);

/* conn.c (conn_upcalls): a packet from the remote broker. False when c stopped taking
 * input. */
bool bridge_on_packet(struct conn *c, const struct mqtt_fixed_header *h,
		      const uint8_t *body);
/* conn.c (conn_upcalls): the TLS handshake of c (a bridge's connection) is done. */
void bridge_on_tls_ready(struct conn *c);
/* conn.c (conn_upcalls): c (a bridge's connection) is closing. */
void bridge_on_close(struct conn *c);
/* session.c (session_upcalls): a message for the bridge's local session, mapped to the
 * remote's topic (the out direction) before it is queued or sent. */
void bridge_deliver(struct session *ss, struct msg *m, const struct deliv *d);
/* handle_publish.c: the local topic for a remote topic (the in
 * direction): NULL when it stays as it is, else a malloc'd topic that
 * *t now points to (the caller frees it). */
char *bridge_map_in(struct conn *c, struct mqtt_bytes *t);

#endif
