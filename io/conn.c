/* A client connection: framing, dispatch, the wire queue, closing.
 *
 * Received bytes are decoded where they lie (in the shard's provided
 * buffer); only a packet split across receives is copied into a buffer of
 * the connection's own, freed as soon as the packet is complete. Outgoing
 * packets wait in a ring of entries that reference shared message buffers
 * and go out as one gathered sendmsg per connection per loop turn. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/tls.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bpf/flood_filter.h"
#include "core/log.h"
#include "ws/ws.h"
#include "io/conn.h"
#include "io/ktls.h"
#include "io/proxyconn.h"
#include "io/msg.h"
#include "io/session-t.h"
#include "io/shard.h"
#include "io/wsconn.h"

/* iovecs one wire entry needs at most: header, topic, packet id and
 * per-delivery properties, the message's properties, payload. */
#define OUT_ENTRY_IOV_MAX 6

struct send_ctx {
	struct send_ctx *pool_next; /* in shard->ctx_pool */
	uint8_t pool_cls; /* enum send_ctx_class, or SEND_CTX_UNPOOLED */
	struct msghdr mh;
	struct out_entry *retired; /* outq array the iovecs point into */
	/* Bytes the send holds, no longer in the wire queue (TLS records,
	 * WebSocket frames, or packets copied out of the queue), of which
	 * bytes_off of bytes_len are sent; owned is freed when it completes. */
	uint8_t *owned;
	struct fan_buf *fan; /* bytes is its data: a reference to drop */
	uint8_t *bytes;
	size_t bytes_len, bytes_off;
	/* Kernel TLS: a record other than application data (alert 21,
	 * handshake 22) and its TLS_SET_RECORD_TYPE message; 0 otherwise. */
	uint8_t record_type;
	_Alignas(struct cmsghdr) char cmsg[CMSG_SPACE(sizeof(uint8_t))];
	struct iovec iov[];
};

/* A turn's QoS 0 packets as one fan-out leaves them: every subscriber
 * whose queue holds the same messages sends these same bytes. Only its
 * shard touches it: a plain count. */
struct fan_buf {
	uint32_t refs;
	uint32_t len;
	uint8_t data[];
};

/* The last fan_buf built, and the messages it holds, each referenced so
 * that a pointer seen again is the same message. */
struct fan_cache {
	struct fan_buf *buf;
	uint32_t n;
	/* References handed over by the wire queues that sent buf: each
	 * message's are dropped at once when the cache moves on (one
	 * atomic per message, not one per subscriber). */
	uint32_t owed;
	struct msg *msg[FAN_CACHE_MSGS];
};

/* Largest plaintext handed to OpenSSL at once: one full TLS record. */
#define TLS_RECORD_PLAIN 16384

/* Set once before the shards start (conn_set_upcalls). */
static const struct conn_upcalls *up;

void conn_set_upcalls(const struct conn_upcalls *u)
{
	up = u;
}

int conn_handle(struct conn *c, const struct mqtt_fixed_header *h,
		const uint8_t *body, size_t len)
{
	packet_handler fn = up->handlers[h->type];
	assert(fn);
	return fn(c, h, body, len);
}

const char *conn_peer_str(const struct conn *c, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (c->peer.sin6_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)&c->peer;
		if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr))
			inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], host,
				  sizeof(host));
		else
			inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
	}
	snprintf(buf, len, "%s:%u", host, port);
	return buf;
}

const char *conn_client_id(const struct conn *c)
{
	return c->session ? c->session->client_id : "<unknown>";
}

/* The filter keys IPv4 sources as IPv4: unwrap the v4-mapped form. */
static socklen_t conn_peer_native(const struct conn *c,
				  struct sockaddr_storage *out)
{
	memset(out, 0, sizeof(*out));
	if (!IN6_IS_ADDR_V4MAPPED(&c->peer.sin6_addr)) {
		memcpy(out, &c->peer, sizeof(c->peer));
		return sizeof(c->peer);
	}
	struct sockaddr_in *a = (struct sockaddr_in *)out;
	a->sin_family = AF_INET;
	a->sin_port = c->peer.sin6_port;
	memcpy(&a->sin_addr, &c->peer.sin6_addr.s6_addr[12], 4);
	return sizeof(*a);
}

void conn_strike(struct conn *c)
{
	struct flood_filter *ff = c->shard->b->flood;
	if (!ff || c->bridge) /* never the remote a bridge chose */
		return;
	struct sockaddr_storage ss;
	conn_peer_native(c, &ss);
	flood_filter_strike(ff, (struct sockaddr *)&ss);
}

bool conn_blocked(struct conn *c)
{
	struct flood_filter *ff = c->shard->b->flood;
	if (!ff)
		return false;
	struct sockaddr_storage ss;
	conn_peer_native(c, &ss);
	return flood_filter_blocked(ff, (struct sockaddr *)&ss);
}

void conn_allow(struct conn *c)
{
	struct flood_filter *ff = c->shard->b->flood;
	if (!ff || c->bridge)
		return;
	struct sockaddr_storage ss;
	conn_peer_native(c, &ss);
	flood_filter_allow(ff, (struct sockaddr *)&ss);
}

/* ---- input ------------------------------------------------------------- */

static uint32_t conn_max_packet(const struct conn *c)
{
	uint32_t max = c->shard->cfg->max_packet_size;
	return max ? max : MQTT_VARINT_MAX + 5u;
}

/* Runs one complete packet; returns false when the connection stopped
 * taking input (closed or moving to another shard). */
static bool conn_dispatch(struct conn *c, const struct mqtt_fixed_header *h,
			  const uint8_t *body)
{
	c->last_rx_ms = (uint32_t)c->shard->now_ms;
	stat_add(&c->shard->stats.msgs_received, 1);
	if (c->bridge)
		return up->bridge_on_packet(c, h, body);
	if (c->state == CONN_AWAIT_CONNECT && h->type != MQTT_CONNECT) {
		conn_strike(c);
		conn_close(c, "first packet was not CONNECT", false);
		return false;
	}
	packet_handler fn = up->handlers[h->type];
	if (!fn) {
		/* CONNACK, SUBACK... from a client: a Protocol Error, closed
		 * without a DISCONNECT as Mosquitto does. */
		conn_strike(c);
		conn_close(c, "packet type not allowed from a client (protocol error)", true);
		return false;
	}
	if (fn(c, h, body, h->remaining_len) < 0)
		return false;
	return c->state == CONN_ACTIVE || c->state == CONN_AWAIT_CONNECT;
}

/* ---- partial packets ------------------------------------------------------
 *
 * Memory for a partial packet grows with the bytes that actually arrived
 * (at most doubling), never with the length its header announces: a
 * header announcing 256 MB costs what the peer really sent. Every buffer
 * is charged to one of the shard's two budgets. */

static uint64_t *conn_input_budget(struct conn *c, uint8_t charge,
				   uint64_t *max)
{
	struct shard *s = c->shard;
	*max = charge == INPUT_PRELOGIN ? SHARD_PRELOGIN_INPUT_MAX
					: SHARD_INPUT_MAX;
	return charge == INPUT_PRELOGIN ? &s->input_prelogin : &s->input_active;
}

static void conn_input_uncharge(struct conn *c)
{
	uint64_t max;
	if (c->in_charge != INPUT_UNCHARGED) {
		uint64_t *used = conn_input_budget(c, c->in_charge, &max);
		assert(*used >= c->in_cap);
		*used -= c->in_cap;
	}
	c->in_charge = INPUT_UNCHARGED;
}

uint8_t *conn_take_input(struct conn *c, uint32_t *len)
{
	uint8_t *data = c->in_buf;
	*len = c->in_len;
	conn_input_uncharge(c);
	c->in_buf = NULL;
	c->in_len = c->in_cap = 0;
	return data;
}

/* Appends len bytes of a packet of `want` bytes in all (0: unknown).
 * 0, or -1 after closing c (a budget is spent, or out of memory). */
static int conn_stash(struct conn *c, const uint8_t *data, size_t len,
		      size_t want)
{
	size_t need = (size_t)c->in_len + len;
	if (need > c->in_cap) {
		size_t target = (size_t)c->in_cap * 2;
		if (target > want)
			target = want;
		if (target < need)
			target = need;
		/* Bytes that move with a hand-off are charged where they
		 * land (conn_on_plain on the adopting shard). */
		uint8_t charge = c->state == CONN_HANDOFF ? INPUT_UNCHARGED
				 : c->state == CONN_AWAIT_CONNECT ? INPUT_PRELOGIN
								  : INPUT_ACTIVE;
		uint64_t max, *used = NULL;
		if (charge != INPUT_UNCHARGED) {
			used = conn_input_budget(c, charge, &max);
			uint64_t have = c->in_charge == charge ? c->in_cap : 0;
			if (*used - have + target > max) {
				conn_protocol_error(c, MQTT_RC_QUOTA_EXCEEDED,
						    charge == INPUT_PRELOGIN
							    ? "input budget for clients not yet "
							      "logged in spent"
							    : "shard input budget spent");
				return -1;
			}
		}
		uint8_t *n = realloc(c->in_buf, target);
		if (!n) {
			conn_close(c, "out of memory", false);
			return -1;
		}
		conn_input_uncharge(c);
		c->in_buf = n;
		c->in_cap = (uint32_t)target;
		if (used) {
			*used += target;
			c->in_charge = charge;
		}
	}
	memcpy(c->in_buf + c->in_len, data, len);
	c->in_len += (uint32_t)len;
	return 0;
}

/* Frames one packet at data; returns its total size, 0 if incomplete (with
 * *h filled when the header is complete), or -1 after closing c. */
static long conn_frame(struct conn *c, const uint8_t *data, size_t len,
		       struct mqtt_fixed_header *h, bool *have_header)
{
	*have_header = false;
	enum mqtt_frame_status st = c->version == MQTT_V31
					    ? mqtt_frame_parse_v31(data, len, h)
					    : mqtt_frame_parse(data, len, h);
	if (st == MQTT_FRAME_NEED_MORE)
		return 0;
	if (st == MQTT_FRAME_MALFORMED) {
		if (c->state == CONN_AWAIT_CONNECT)
			conn_strike(c); /* garbage before CONNECT */
		if (!up->handlers[data[0] >> 4]) {
			/* A type no client sends, with bad flags too: closed
			 * as any packet of that type (with the will). */
			conn_close(c, "packet type not allowed from a client (protocol error)", true);
			return -1;
		}
		conn_protocol_error(c, MQTT_RC_MALFORMED_PACKET,
				    "malformed fixed header");
		return -1;
	}
	*have_header = true;
	size_t total = (size_t)h->header_len + h->remaining_len;
	if (c->state == CONN_AWAIT_CONNECT && total > CONN_CONNECT_BYTES_MAX) {
		conn_strike(c);
		conn_close(c, h->type == MQTT_CONNECT
				      ? "CONNECT larger than 64 KiB"
				      : "first packet was not CONNECT", false);
		return -1;
	}
	/* Mosquitto's measure: remaining length plus the first byte. */
	if ((size_t)h->remaining_len + 1 > conn_max_packet(c)) {
		conn_protocol_error(c, MQTT_RC_PACKET_TOO_LARGE,
				    "packet larger than max_packet_size");
		return -1;
	}
	return total <= len ? (long)total : 0;
}

/* A packet whose answer depends on the ACL, the passwords or the retained
 * messages' sources waits while a SIGHUP's reload is coming: a client that
 * connects or subscribes after the signal was sent is served under the new
 * files, as by Mosquitto, which reloads before serving anyone. */
static bool conn_park_for_reload(struct conn *c, uint8_t type)
{
	if (c->bridge || (type != MQTT_CONNECT && type != MQTT_SUBSCRIBE) ||
	    !shard_reload_coming(c->shard))
		return false;
	shard_park_input(c->shard, c, PARK_RELOAD);
	return true;
}

/* A SUBSCRIBE finds the retained messages of every PUBLISH that reached
 * kite before it, whichever shard read that PUBLISH: with several
 * shards it waits for a barrier round first (shard_barrier_wait). A
 * client that published retained and closed, and another that
 * subscribes at once on another shard, see Mosquitto's order. */
static bool conn_park_for_barrier(struct conn *c, uint8_t type)
{
	if (c->bridge || type != MQTT_SUBSCRIBE || c->shard->b->nshards < 2)
		return false;
	if (c->barrier_passed) {
		c->barrier_passed = false;
		return false;
	}
	return shard_barrier_wait(c->shard, c);
}

static bool conn_park_before(struct conn *c, uint8_t type)
{
	return conn_park_for_reload(c, type) || conn_park_for_barrier(c, type);
}

/* Completes a packet split across receives; returns bytes of data used,
 * or -1 when the connection closed. *go_on turns false when the packet
 * stopped the input (a CONNECT whose session is on another shard): what
 * follows the bytes used goes with the connection. */
static long conn_finish_partial(struct conn *c, const uint8_t *data,
				size_t len, bool *go_on)
{
	struct mqtt_fixed_header h;
	bool have;
	size_t used = 0;
	/* Grow the header a byte at a time: it is at most 5 bytes. */
	while (used < len) {
		long r = conn_frame(c, c->in_buf, c->in_len, &h, &have);
		if (r < 0)
			return -1;
		if (have)
			break;
		if (conn_stash(c, data + used, 1, 5) < 0)
			return -1;
		used++;
	}
	long r = conn_frame(c, c->in_buf, c->in_len, &h, &have);
	if (r < 0)
		return -1;
	if (!have)
		return (long)used;
	size_t total = (size_t)h.header_len + h.remaining_len;
	size_t take = total - c->in_len;
	if (take > len - used)
		take = len - used;
	if (conn_stash(c, data + used, take, total) < 0)
		return -1;
	used += take;
	if (c->in_len < total || conn_park_before(c, h.type))
		return (long)used;
	uint32_t pkt_len;
	uint8_t *pkt = conn_take_input(c, &pkt_len);
	*go_on = conn_dispatch(c, &h, pkt + h.header_len);
	free(pkt);
	return (long)used;
}

void conn_on_plain(struct conn *c, const uint8_t *data, size_t len)
{
	if (c->state == CONN_CLOSING)
		return;
	if (c->state == CONN_HANDOFF || c->parked) {
		conn_stash(c, data, len, 0);
		return;
	}
	if (c->in_len) {
		bool go_on = true;
		long used = conn_finish_partial(c, data, len, &go_on);
		if (used < 0)
			return;
		data += used;
		len -= (size_t)used;
		if (!go_on)
			goto stopped;
	}
	while (len) {
		if (c->parked) { /* by the last packet (a takeover) */
			conn_stash(c, data, len, 0);
			return;
		}
		struct mqtt_fixed_header h;
		bool have;
		long total = conn_frame(c, data, len, &h, &have);
		if (total < 0)
			return;
		if (total == 0) {
			size_t want = have ? (size_t)h.header_len + h.remaining_len : 5;
			conn_stash(c, data, len, want);
			return;
		}
		if (conn_park_before(c, h.type)) {
			conn_stash(c, data, len, 0);
			return;
		}
		data += total;
		len -= (size_t)total;
		if (!conn_dispatch(c, &h, data - total + h.header_len))
			goto stopped;
	}
	return;
stopped:
	/* Bytes behind a CONNECT that moves the connection go with it. */
	if (c->state == CONN_HANDOFF && len)
		conn_stash(c, data, len, 0);
}

/* A TLS record arriving on a plain listener: a client configured for TLS,
 * told plainly in the log instead of "malformed packet". */
static bool conn_looks_like_tls(const struct conn *c, const uint8_t *data,
				size_t len)
{
	return c->state == CONN_AWAIT_CONNECT && !c->in_len && len >= 2 &&
	       data[0] == 0x16 && data[1] == 0x03;
}

static void conn_tls_failed(struct conn *c)
{
	char peer[64];
	const char *why = tls_conn_error(c->tls);
	if (!tls_conn_handshake_done(c->tls))
		stat_add(&c->shard->stats.tls_handshakes[TLS_HS_ERROR], 1);
	log_msg(KITE_LOG_NOTICE, "TLS %s with %s failed: %s",
		tls_conn_handshake_done(c->tls) ? "session" : "handshake",
		conn_peer_str(c, peer, sizeof(peer)), why ? why : "unknown");
	if (c->state == CONN_AWAIT_CONNECT)
		conn_strike(c);
	/* The pending bytes are OpenSSL's alert: worth a try. */
	c->flags |= CONN_CLOSE_AFTER_FLUSH;
	conn_close(c, why ? why : "TLS error", true);
}

/* Bytes of the stream the transport carries: MQTT, or WebSocket frames
 * that carry MQTT. */
static void conn_on_stream(struct conn *c, const uint8_t *data, size_t len)
{
	if (c->ws)
		wsconn_on_data(c, data, len);
	else
		conn_on_plain(c, data, len);
}

void conn_on_data(struct conn *c, const uint8_t *data, size_t len)
{
	if (c->state == CONN_CLOSING)
		return;
	if (c->proxy_await && !proxyconn_on_data(c, &data, &len))
		return;
	if (!c->tls) {
		if (conn_looks_like_tls(c, data, len) &&
		    (!c->ws || !ws_is_open(c->ws))) {
			conn_strike(c);
			conn_close(c, "TLS handshake on a plain listener", false);
			return;
		}
		conn_on_stream(c, data, len);
		return;
	}
	struct tls_buf *plain = &c->shard->tls_plain;
	plain->len = 0;
	int rc = tls_conn_feed(c->tls, data, len, plain);
	const uint8_t *p;
	if (tls_conn_pending_out(c->tls, &p))
		conn_mark_dirty(c);
	if (rc == TLS_HANDSHAKE_DONE) {
		stat_add(&c->shard->stats.tls_handshakes[TLS_HS_OK], 1);
		stat_add(&c->shard->stats.tls_open_user, 1);
	}
	if (rc == TLS_HANDSHAKE_DONE && c->bridge)
		up->bridge_on_tls_ready(c);
	/* No kTLS for it: records leave OpenSSL, and its ~20 KiB with them. */
	if (rc == TLS_HANDSHAKE_DONE && !c->shard->b->ktls && !c->bridge)
		tls_conn_shed(c->tls);
	if (rc == TLS_HANDSHAKE_DONE && log_enabled(KITE_LOG_DEBUG)) {
		char peer[64];
		log_msg(KITE_LOG_DEBUG, "TLS %s %s with %s (userspace%s)",
			tls_conn_version(c->tls), tls_conn_cipher(c->tls),
			conn_peer_str(c, peer, sizeof(peer)),
			tls_conn_resumed(c->tls) ? ", resumed session" : "");
	}
	if (plain->len)
		conn_on_stream(c, plain->data, plain->len);
	if (c->state == CONN_CLOSING)
		return;
	if (rc == TLS_ERROR)
		conn_tls_failed(c);
	else if (rc == TLS_CLOSED) {
		c->flags |= CONN_CLOSE_AFTER_FLUSH; /* and answer it in kind */
		conn_close(c, "closed by client (TLS close_notify)", true);
	}
	else
		ktls_begin(c); /* no-op unless due */
}

/* ---- output ------------------------------------------------------------ */

void conn_mark_dirty(struct conn *c)
{
	if (c->flags & CONN_DIRTY)
		return;
	c->flags |= CONN_DIRTY;
	c->dirty_next = c->shard->dirty;
	c->shard->dirty = c;
}

static struct out_entry *conn_out_push(struct conn *c)
{
	if (c->out_count == c->out_cap) {
		uint32_t ncap = c->out_cap ? c->out_cap * 2 : 2;
		struct out_entry *n = malloc(sizeof(*n) * ncap);
		if (!n)
			return NULL;
		for (uint32_t i = 0; i < c->out_count; i++)
			n[i] = c->outq[(c->out_head + i) & (c->out_cap - 1)];
		/* An in-flight send still points into the old array. */
		if (c->send && !c->send->retired)
			c->send->retired = c->outq;
		else
			free(c->outq);
		c->outq = n;
		c->out_head = 0;
		c->out_cap = ncap;
	}
	struct out_entry *e = &c->outq[(c->out_head + c->out_count) & (c->out_cap - 1)];
	c->out_count++;
	memset(e, 0, sizeof(*e));
	return e;
}

void conn_queue_ctrl(struct conn *c, const uint8_t *bytes, size_t len)
{
	assert(len > 0 && len <= MQTT_VARINT_MAX + 5u);
	if (c->state == CONN_CLOSING && !(c->flags & CONN_CLOSE_AFTER_FLUSH))
		return;
	struct out_entry *e = conn_out_push(c);
	if (!e) {
		conn_close(c, "out of memory", false);
		return;
	}
	e->kind = OUT_CTRL;
	e->len = (uint32_t)len;
	if (len <= sizeof(e->inl)) {
		memcpy(e->inl, bytes, len);
	} else if ((e->data = malloc(len))) {
		memcpy(e->data, bytes, len);
	} else {
		c->out_count--;
		conn_close(c, "out of memory", false);
		return;
	}
	c->out_bytes += len;
	/* A publisher's acks: its queue is in use as a subscriber's is. */
	unsigned type = bytes[0] >> 4;
	if (type >= MQTT_PUBACK && type <= MQTT_PUBCOMP)
		c->outq_keep = CONN_OUTQ_KEEP_TICKS;
	stat_add(&c->shard->stats.msgs_sent, 1);
	conn_mark_dirty(c);
}

/* The alias this client knows for m's topic (*known), or a new one it is
 * told now; 0 when the client takes none or they are all in use. */
static uint16_t conn_out_alias(struct conn *c, const struct msg *m, bool *known)
{
	struct conn_v5 *v5 = c->v5;
	*known = false;
	if (!v5 || !v5->out_alias_max)
		return 0;
	for (uint16_t i = 0; i < v5->out_alias_used; i++) {
		struct out_alias *a = &v5->out_aliases[i];
		if (a->hash == m->topic_hash && a->len == m->topic_len &&
		    !memcmp(a->topic, msg_topic(m), a->len)) {
			*known = true;
			return (uint16_t)(i + 1);
		}
	}
	if (v5->out_alias_used == v5->out_alias_max)
		return 0;
	if (!v5->out_aliases &&
	    !(v5->out_aliases = calloc(v5->out_alias_max, sizeof(*v5->out_aliases))))
		return 0;
	struct out_alias *a = &v5->out_aliases[v5->out_alias_used];
	if (!(a->topic = malloc(m->topic_len ? m->topic_len : 1)))
		return 0;
	memcpy(a->topic, msg_topic(m), m->topic_len);
	a->len = m->topic_len;
	a->hash = m->topic_hash;
	return ++v5->out_alias_used;
}

/* MQTT 5 properties of one delivery, after the packet id: the property
 * length (covering these and the message's own), the message expiry left,
 * the subscription identifiers, the topic alias. Returns bytes written. */
static uint8_t pub_v5_mid(uint8_t *mid, const struct msg *m,
			  const struct deliv *d, uint32_t expiry_left,
			  uint16_t alias)
{
	uint8_t own[40];
	size_t n = 0;
	if (alias) {
		own[n++] = MQTT_PROP_TOPIC_ALIAS;
		own[n++] = (uint8_t)(alias >> 8);
		own[n++] = (uint8_t)alias;
	}
	if (expiry_left != UINT32_MAX) {
		own[n++] = MQTT_PROP_MESSAGE_EXPIRY_INTERVAL;
		own[n++] = (uint8_t)(expiry_left >> 24);
		own[n++] = (uint8_t)(expiry_left >> 16);
		own[n++] = (uint8_t)(expiry_left >> 8);
		own[n++] = (uint8_t)expiry_left;
	}
	for (unsigned i = 0; i < d->nsub; i++) {
		own[n++] = MQTT_PROP_SUBSCRIPTION_IDENTIFIER;
		n += mqtt_varint_encode(own + n, d->sub[i]);
	}
	size_t k = mqtt_varint_encode(mid, (uint32_t)n + m->props_len);
	memcpy(mid + k, own, n);
	return (uint8_t)(k + n);
}

/* Whether QoS 0 to c waits behind too much already (conn-t.h). */
static bool conn_qos0_backlogged(struct conn *c)
{
	const struct kite_config *cfg = c->shard->cfg;
	uint32_t max_n = cfg->max_queued_messages;
	if (max_n)
		max_n += cfg->max_inflight_messages ? cfg->max_inflight_messages
						    : 65535;
	bool full = (max_n && c->out_count >= max_n) ||
		    (cfg->max_queued_bytes && c->out_bytes >= cfg->max_queued_bytes) ||
		    c->out_bytes >= CONN_OUTQ_BYTES_MAX;
	if (full && !(c->flags & CONN_DROPPING)) {
		c->flags |= CONN_DROPPING;
		log_msg(KITE_LOG_NOTICE,
			"Outgoing messages are being dropped for client %s.",
			conn_client_id(c));
	}
	return full;
}

int conn_mount(const struct conn *c, struct mqtt_bytes *b, char **owned)
{
	const char *mount = c->shard->cfg->listeners[c->listener].mount_point;
	size_t mlen = strlen(mount);
	*owned = NULL;
	if (!mlen)
		return 0;
	if (mlen + b->len > UINT16_MAX)
		return -1;
	char *t = malloc(mlen + b->len + 1);
	if (!t)
		return -1;
	memcpy(t, mount, mlen);
	memcpy(t + mlen, b->ptr, b->len);
	t[mlen + b->len] = '\0';
	*owned = t;
	b->ptr = (const uint8_t *)t;
	b->len = (uint32_t)(mlen + b->len);
	return 0;
}

bool conn_queue_publish(struct conn *c, struct msg *m, const struct deliv *d,
			bool dup, uint16_t pid)
{
	assert(d->qos <= 2 && (d->qos == 0) == (pid == 0));
	assert(d->nsub <= DELIV_SUBIDS_MAX);
	if (c->state != CONN_ACTIVE)
		return false;
	if (d->qos == 0 && conn_qos0_backlogged(c))
		return false;
	uint32_t left = msg_expiry_left(m, c->shard->now_ms);
	if (left == 0 && !dup)
		return false; /* expired before onward delivery started */
	bool v5 = c->version == MQTT_V5;
	struct out_entry e = {.msg = m};
	/* mount_point: the client sees topics without it (Mosquitto drops
	 * what is not below it). */
	const char *mount = c->shard->cfg->listeners[c->listener].mount_point;
	size_t skip = strlen(mount);
	if (skip && (m->topic_len <= skip || memcmp(msg_topic(m), mount, skip)))
		return false;
	e.tskip = (uint8_t)skip;
	if (d->qos == 0 && !d->retain && !v5 && !skip) {
		e.kind = OUT_PUB_Q0V3;
		e.len = (uint32_t)msg_q0_packet(m).iov_len;
	} else {
		bool known = false;
		uint16_t alias = v5 && !skip ? conn_out_alias(c, m, &known) : 0;
		e.kind = !v5 ? OUT_PUB : known ? OUT_PUB5_ALIASED : OUT_PUB5;
		uint8_t *mid = e.inl + 5;
		if (d->qos) {
			mid[e.mid++] = (uint8_t)(pid >> 8);
			mid[e.mid++] = (uint8_t)pid;
		}
		if (v5)
			e.mid += pub_v5_mid(mid + e.mid, m, d,
					    left == 0 ? UINT32_MAX : left, alias);
		uint32_t body = 2u + (known ? 0u : (uint32_t)(m->topic_len - e.tskip)) + e.mid +
				(v5 ? m->props_len : 0) + m->payload_len;
		uint8_t hdr[5];
		hdr[0] = (uint8_t)(MQTT_PUBLISH << 4 | (dup ? 8 : 0) |
				   d->qos << 1 | (d->retain ? 1 : 0));
		e.hlen = (uint8_t)(1 + mqtt_varint_encode(hdr + 1, body));
		memmove(e.inl + e.hlen, mid, e.mid);
		memcpy(e.inl, hdr, e.hlen);
		if (e.tskip) {
			uint16_t tl = (uint16_t)(m->topic_len - e.tskip);
			e.inl[e.hlen + e.mid] = (uint8_t)(tl >> 8);
			e.inl[e.hlen + e.mid + 1] = (uint8_t)tl;
		}
		e.len = e.hlen + body;
	}
	/* The client's maximum packet size (MQTT 5): not sent, not queued. */
	if (c->v5 && c->v5->max_packet && e.len > c->v5->max_packet)
		return false;
	struct out_entry *slot = conn_out_push(c);
	if (!slot) {
		conn_close(c, "out of memory", false);
		return false;
	}
	*slot = e;
	slot->msg = msg_ref(m);
	c->out_bytes += e.len;
	c->outq_keep = CONN_OUTQ_KEEP_TICKS;
	stat_add(&c->shard->stats.publish_sent, 1);
	stat_add(&c->shard->stats.msgs_sent, 1);
	conn_mark_dirty(c);
	return true;
}

static void out_entry_release(struct out_entry *e)
{
	msg_unref(e->msg);
	free(e->data);
}

/* Appends the iovecs of e, skipping its first `skip` bytes. */
static unsigned out_entry_iov(struct out_entry *e, size_t skip,
			      struct iovec *iov)
{
	struct iovec parts[OUT_ENTRY_IOV_MAX];
	unsigned n = 0;
	if (e->kind == OUT_CTRL) {
		parts[n++] = (struct iovec){e->data ? e->data : e->inl, e->len};
	} else if (e->kind == OUT_PUB_Q0V3) {
		parts[n++] = msg_q0_packet(e->msg);
	} else {
		static const uint8_t no_topic[2];
		parts[n++] = (struct iovec){e->inl, e->hlen};
		if (e->tskip) {
			parts[n++] = (struct iovec){e->inl + e->hlen + e->mid, 2};
			parts[n++] = (struct iovec){
				(void *)(msg_topic(e->msg) + e->tskip),
				e->msg->topic_len - e->tskip};
		} else {
			parts[n++] = e->kind == OUT_PUB5_ALIASED
					     ? (struct iovec){(void *)no_topic, 2}
					     : msg_topic_wire(e->msg);
		}
		if (e->mid)
			parts[n++] = (struct iovec){e->inl + e->hlen, e->mid};
		if (e->kind != OUT_PUB && e->msg->props_len)
			parts[n++] = msg_props_wire(e->msg);
		parts[n++] = msg_payload_wire(e->msg);
	}
	unsigned out = 0;
	for (unsigned i = 0; i < n; i++) {
		if (skip >= parts[i].iov_len) {
			skip -= parts[i].iov_len;
			continue;
		}
		iov[out].iov_base = (uint8_t *)parts[i].iov_base + skip;
		iov[out].iov_len = parts[i].iov_len - skip;
		skip = 0;
		if (iov[out].iov_len)
			out++;
	}
	return out;
}

void conn_shutdown(struct conn *c)
{
	if (c->flags & CONN_SHUTDOWN_SENT)
		return;
	c->flags |= CONN_SHUTDOWN_SENT | CONN_SHUTDOWN_BUSY;
	struct io_uring_sqe *sqe = shard_sqe(c->shard);
	io_uring_prep_shutdown(sqe, c->fd, SHUT_RDWR);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_SHUTDOWN, c->id, c->gen));
}

static void conn_out_consume(struct conn *c, size_t bytes)
{
	c->out_bytes -= bytes;
	while (bytes) {
		assert(c->out_count);
		struct out_entry *e = &c->outq[c->out_head];
		size_t left = e->len - c->head_off;
		if (bytes < left) {
			c->head_off += (uint32_t)bytes;
			return;
		}
		bytes -= left;
		out_entry_release(e);
		c->out_head = (c->out_head + 1) & (c->out_cap - 1);
		c->out_count--;
		c->head_off = 0;
	}
	/* An empty ring starts over at its first slots, which the next
	 * turn then writes while they are still in the cache. */
	if (!c->out_count)
		c->out_head = 0;
}

static void conn_out_drop_all(struct conn *c)
{
	while (c->out_count) {
		out_entry_release(&c->outq[c->out_head]);
		c->out_head = (c->out_head + 1) & (c->out_cap - 1);
		c->out_count--;
	}
	c->head_off = 0;
	c->out_bytes = 0;
}

static bool conn_has_output(struct conn *c)
{
	const uint8_t *p;
	return c->out_count || (c->tls_flags & CONN_TLS_OWED) ||
	       (c->tls && tls_conn_pending_out(c->tls, &p)) ||
	       (c->ws && ws_out_pending(c->ws, &p));
}

/* Copies up to cap queued bytes from the head of the wire queue. */
static size_t conn_out_copy(struct conn *c, uint8_t *dst, size_t cap)
{
	struct iovec iov[OUT_ENTRY_IOV_MAX];
	size_t n = 0, skip = c->head_off;
	for (uint32_t i = 0; i < c->out_count && n < cap; i++) {
		struct out_entry *e = &c->outq[(c->out_head + i) & (c->out_cap - 1)];
		unsigned k = out_entry_iov(e, skip, iov);
		skip = 0;
		for (unsigned j = 0; j < k && n < cap; j++) {
			size_t take = iov[j].iov_len < cap - n ? iov[j].iov_len : cap - n;
			memcpy(dst + n, iov[j].iov_base, take);
			n += take;
		}
	}
	return n;
}

/* Up to cap queued bytes from the head of the wire queue as iovecs (at
 * most max, max >= OUT_ENTRY_IOV_MAX); *bytes gets their total. */
static unsigned conn_out_iov(struct conn *c, struct iovec *iov, unsigned max,
			     size_t cap, size_t *bytes)
{
	unsigned k = 0;
	size_t n = 0, skip = c->head_off;
	for (uint32_t i = 0; i < c->out_count && n < cap &&
			     k + OUT_ENTRY_IOV_MAX <= max; i++) {
		struct out_entry *e = &c->outq[(c->out_head + i) & (c->out_cap - 1)];
		unsigned m = out_entry_iov(e, skip, iov + k);
		skip = 0;
		/* The entry's pieces, the last one cut at cap. */
		for (unsigned j = 0; j < m && n < cap; j++, k++) {
			if (iov[k].iov_len > cap - n)
				iov[k].iov_len = cap - n;
			n += iov[k].iov_len;
		}
	}
	*bytes = n;
	return k;
}

/* A context of one class from the shard's pool: a busy connection
 * sends every turn, and a malloc and free per send would be per delivery
 * for a subscriber that gets one message at a time. SEND_CTX_SMALL and
 * SEND_CTX_LARGE hold up to SEND_CTX_SMALL_IOV and SEND_IOV_MAX iovecs;
 * SEND_CTX_COPY_SMALL and SEND_CTX_COPY one iovec over
 * SEND_COPY_SMALL_BYTES or SEND_COPY_BYTES bytes of their own. */
static struct send_ctx *send_ctx_get(struct shard *s, unsigned cls)
{
	static const uint32_t iov_cap[SEND_CTX_CLASSES] = {
		[SEND_CTX_SMALL] = SEND_CTX_SMALL_IOV,
		[SEND_CTX_LARGE] = SEND_IOV_MAX,
		[SEND_CTX_COPY_SMALL] = 1,
		[SEND_CTX_COPY] = 1,
	};
	struct send_ctx *ctx = s->ctx_pool[cls];
	if (ctx) {
		s->ctx_pool[cls] = ctx->pool_next;
		if (--s->ctx_pool_n[cls] < s->ctx_pool_low[cls])
			s->ctx_pool_low[cls] = s->ctx_pool_n[cls];
		return ctx;
	}
	size_t extra = cls == SEND_CTX_COPY	  ? SEND_COPY_BYTES
		       : cls == SEND_CTX_COPY_SMALL ? SEND_COPY_SMALL_BYTES
						    : 0;
	ctx = malloc(sizeof(*ctx) + sizeof(struct iovec) * iov_cap[cls] + extra);
	if (ctx) {
		ctx->pool_cls = (uint8_t)cls;
		ctx->retired = NULL;
		ctx->owned = NULL;
		ctx->fan = NULL;
	}
	return ctx;
}

static void send_ctx_put(struct shard *s, struct send_ctx *ctx)
{
	static const uint32_t pool_max[SEND_CTX_CLASSES] = {
		[SEND_CTX_SMALL] = SEND_CTX_POOL_SMALL,
		[SEND_CTX_LARGE] = SEND_CTX_POOL_LARGE,
		[SEND_CTX_COPY_SMALL] = SEND_CTX_POOL_COPY_SMALL,
		[SEND_CTX_COPY] = SEND_CTX_POOL_COPY,
	};
	unsigned cls = ctx->pool_cls;
	if (cls >= SEND_CTX_CLASSES || s->ctx_pool_n[cls] >= pool_max[cls]) {
		free(ctx);
		return;
	}
	ctx->pool_next = s->ctx_pool[cls];
	s->ctx_pool[cls] = ctx;
	s->ctx_pool_n[cls]++;
}

static void fan_buf_unref(struct fan_buf *b)
{
	if (b && !--b->refs)
		free(b);
}

static void fan_cache_clear(struct fan_cache *fc)
{
	for (uint32_t i = 0; i < fc->n; i++)
		msg_unref_n(fc->msg[i], fc->owed + 1);
	fc->n = 0;
	fc->owed = 0;
	fan_buf_unref(fc->buf);
	fc->buf = NULL;
}

/* What a send context holds besides itself. */
static void send_ctx_drop_bufs(struct send_ctx *ctx)
{
	free(ctx->retired);
	free(ctx->owned);
	fan_buf_unref(ctx->fan);
	ctx->retired = NULL;
	ctx->owned = NULL;
	ctx->fan = NULL;
}

void conn_pools_trim(struct shard *s)
{
	/* A burst (thousands of logins, each CONNACK a copy context) fills
	 * the pools to their bounds; what then sits unused for a tick goes
	 * back, so idle connections do not keep a burst's buffers. */
	for (unsigned cls = 0; cls < SEND_CTX_CLASSES; cls++) {
		for (uint32_t n = s->ctx_pool_low[cls]; n && s->ctx_pool[cls]; n--) {
			struct send_ctx *ctx = s->ctx_pool[cls];
			s->ctx_pool[cls] = ctx->pool_next;
			s->ctx_pool_n[cls]--;
			free(ctx);
		}
		s->ctx_pool_low[cls] = s->ctx_pool_n[cls];
	}
}

void conn_pools_free(struct shard *s)
{
	if (s->fan_cache) {
		fan_cache_clear(s->fan_cache);
		free(s->fan_cache);
		s->fan_cache = NULL;
	}
	for (unsigned cls = 0; cls < SEND_CTX_CLASSES; cls++) {
		while (s->ctx_pool[cls]) {
			struct send_ctx *ctx = s->ctx_pool[cls];
			s->ctx_pool[cls] = ctx->pool_next;
			free(ctx);
		}
		s->ctx_pool_n[cls] = 0;
	}
}

static void conn_submit_send(struct conn *c, struct send_ctx *ctx)
{
	c->send = ctx;
	c->flags |= CONN_SEND_BUSY;
	struct io_uring_sqe *sqe = shard_sqe(c->shard);
	/* One buffer (an ack, a lone packet, TLS records): a plain send,
	 * which spares the kernel importing a msghdr and an iovec array. */
	if (ctx->mh.msg_iovlen == 1 && !ctx->mh.msg_controllen)
		io_uring_prep_send(sqe, c->fd, ctx->iov[0].iov_base,
				   ctx->iov[0].iov_len, MSG_NOSIGNAL);
	else
		io_uring_prep_sendmsg(sqe, c->fd, &ctx->mh, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_SEND, c->id, c->gen));
}

/* A send context holding its own copy of bytes (one iovec): for bytes
 * whose owner may move or free them while the kernel reads. NULL (and
 * the connection closed) when out of memory. */
static struct send_ctx *send_ctx_copy(struct conn *c, const uint8_t *bytes,
				      size_t len)
{
	struct send_ctx *ctx = malloc(sizeof(*ctx) + sizeof(struct iovec) + len);
	if (!ctx) {
		conn_close(c, "out of memory", false);
		return NULL;
	}
	memset(ctx, 0, sizeof(*ctx));
	ctx->pool_cls = SEND_CTX_UNPOOLED;
	uint8_t *copy = (uint8_t *)(ctx->iov + 1);
	memcpy(copy, bytes, len);
	ctx->iov[0] = (struct iovec){copy, len};
	ctx->mh.msg_iov = ctx->iov;
	ctx->mh.msg_iovlen = 1;
	return ctx;
}

/* A byte layer's pending output (TLS records, WebSocket frames), handed
 * over: the buffer, which the send then owns, and where its bytes are;
 * the layer's output is empty afterwards. NULL: out of memory. */
typedef uint8_t *(*conn_take_fn)(void *layer, size_t *off, size_t *len);

/* TLS records are sealed into a buffer of their own: no copy. */
static uint8_t *conn_tls_take(void *layer, size_t *off, size_t *len)
{
	return tls_conn_take_out(layer, off, len);
}

/* wslay builds frames in the layer's buffer, which the next frame may
 * move: a copy. */
static uint8_t *conn_ws_take(void *layer, size_t *off, size_t *len)
{
	const uint8_t *p;
	*off = 0;
	*len = ws_out_pending(layer, &p);
	uint8_t *b = malloc(*len);
	if (b) {
		memcpy(b, p, *len);
		ws_out_consume(layer, *len);
	}
	return b;
}

/* The send tail both byte layers share: one buffer, one send (a partial
 * send goes on from where it stopped, conn_resend_rest). */
static void conn_send_taken(struct conn *c, void *layer, conn_take_fn take)
{
	size_t off, len;
	struct send_ctx *ctx = send_ctx_get(c->shard, SEND_CTX_SMALL);
	uint8_t *b = ctx ? take(layer, &off, &len) : NULL;
	if (!b) {
		if (ctx)
			send_ctx_put(c->shard, ctx);
		conn_close(c, "out of memory", false);
		return;
	}
	assert(len > 0);
	memset(&ctx->mh, 0, sizeof(ctx->mh));
	ctx->iov[0] = (struct iovec){b + off, len};
	ctx->mh.msg_iov = ctx->iov;
	ctx->mh.msg_iovlen = 1;
	ctx->retired = NULL;
	ctx->owned = b;
	ctx->bytes = b + off;
	ctx->bytes_len = len;
	ctx->bytes_off = 0;
	ctx->record_type = 0;
	conn_submit_send(c, ctx);
}

/* WebSockets: the turn's queued MQTT bytes become binary frames in the
 * layer's output (up to 16 KiB each, a packet may span two); our close
 * frame follows the last words of a connection closing after a flush. */
static void conn_ws_frame(struct conn *c)
{
	uint8_t *buf = c->shard->tls_scratch;
	while (c->out_count) {
		size_t n = conn_out_copy(c, buf, TLS_RECORD_PLAIN);
		if (ws_send_binary(c->ws, buf, n) < 0) {
			/* Closed at the WebSocket level: nothing more goes. */
			conn_out_drop_all(c);
			if (c->state != CONN_CLOSING) {
				c->flags |= CONN_CLOSE_AFTER_FLUSH;
				conn_close(c, "WebSocket closed", true);
			}
			break;
		}
		conn_out_consume(c, n);
	}
	if (c->state == CONN_CLOSING && (c->flags & CONN_CLOSE_AFTER_FLUSH))
		ws_send_close(c->ws, WS_CLOSE_NORMAL);
}

/* TLS: the turn's queued bytes (MQTT, or WebSocket frames) become as few
 * records as possible, then the ciphertext goes out in one send. */
static bool conn_tls_write_ws(struct conn *c)
{
	conn_ws_frame(c);
	const uint8_t *p;
	size_t n;
	while ((n = ws_out_pending(c->ws, &p))) {
		if (n > TLS_RECORD_PLAIN)
			n = TLS_RECORD_PLAIN;
		if (tls_conn_write(c->tls, p, n) != TLS_OK) {
			ws_out_drop(c->ws);
			conn_out_drop_all(c);
			conn_tls_failed(c);
			return false;
		}
		ws_out_consume(c->ws, n);
	}
	return true;
}

static void conn_flush_tls(struct conn *c)
{
	uint8_t *buf = c->shard->tls_scratch;
	/* Moving to kernel TLS: OpenSSL's own output (the handshake's
	 * tail) goes, MQTT bytes wait for the kernel (ktls_try). */
	bool for_kernel = c->ktls == KTLS_STOPPING && c->state == CONN_ACTIVE;
	/* Before the handshake, WebSocket bytes wait (there are none). */
	if (c->ws && !for_kernel && tls_conn_handshake_done(c->tls))
		conn_tls_write_ws(c);
	while (c->out_count && !for_kernel && !c->ws) {
		/* One record's worth of the queue, sealed where it lies. */
		struct iovec iov[8 * OUT_ENTRY_IOV_MAX];
		size_t n;
		unsigned k = conn_out_iov(c, iov, sizeof(iov) / sizeof(iov[0]),
					  TLS_RECORD_PLAIN, &n);
		if (tls_conn_writev(c->tls, iov, k, buf) != TLS_OK) {
			conn_out_drop_all(c);
			conn_tls_failed(c);
			break;
		}
		conn_out_consume(c, n);
	}
	if (c->tls_flags & CONN_TLS_OWE_CLOSE_NOTIFY) {
		c->tls_flags &= (uint8_t)~CONN_TLS_OWE_CLOSE_NOTIFY;
		tls_conn_close_notify(c->tls); /* refused after a failure */
	}
	const uint8_t *p;
	size_t len = tls_conn_pending_out(c->tls, &p);
	if (!len) {
		if (c->state == CONN_CLOSING)
			conn_on_closed(c);
		else if (for_kernel)
			ktls_try(c);
		return;
	}
	conn_send_taken(c, c->tls, conn_tls_take);
}

/* Kernel TLS: one record of another type than application data, under
 * the current TX key, in order with the data sends around it. */
void conn_send_record(struct conn *c, uint8_t record_type,
		      const uint8_t *bytes, size_t len)
{
	assert(c->ktls == KTLS_ON && !(c->flags & CONN_SEND_BUSY));
	assert(record_type != 23 && len > 0 && len <= 16);
	struct send_ctx *ctx = send_ctx_copy(c, bytes, len);
	if (!ctx)
		return;
	ctx->record_type = record_type;
	ctx->mh.msg_control = ctx->cmsg;
	ctx->mh.msg_controllen = sizeof(ctx->cmsg);
	struct cmsghdr *cm = CMSG_FIRSTHDR(&ctx->mh);
	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	cm->cmsg_len = CMSG_LEN(sizeof(uint8_t));
	*CMSG_DATA(cm) = record_type;
	conn_submit_send(c, ctx);
}

/* WebSockets over plain TCP or kernel TLS: the frames (or the HTTP
 * answer) as one copied buffer, sent like TLS ciphertext. */
static void conn_flush_ws(struct conn *c)
{
	conn_ws_frame(c);
	const uint8_t *p;
	size_t len = ws_out_pending(c->ws, &p);
	if (!len) {
		if (c->state != CONN_CLOSING)
			return;
		if (c->flags & CONN_SHUTDOWN_SENT)
			conn_on_closed(c);
		else
			conn_shutdown(c);
		return;
	}
	conn_send_taken(c, c->ws, conn_ws_take);
}

/* Whether c's whole queue is a fan-out's QoS 0 packets (3.1.1, as
 * prebuilt in each message) that other queues hold too. */
static bool conn_out_shared_q0(const struct conn *c)
{
	if (c->head_off || c->out_count > FAN_CACHE_MSGS ||
	    c->out_bytes > SEND_COPY_BYTES)
		return false;
	for (uint32_t i = 0; i < c->out_count; i++) {
		const struct out_entry *e =
			&c->outq[(c->out_head + i) & (c->out_cap - 1)];
		if (e->kind != OUT_PUB_Q0V3)
			return false;
	}
	/* Another queue holds it too (this queue's reference and one
	 * more): else nobody would reuse the bytes. */
	const struct msg *m = c->outq[c->out_head].msg;
	return atomic_load_explicit(&m->refs, memory_order_relaxed) > 1;
}

/* Empties c's queue, whose messages are those of fc, into fc: their
 * references are now its to drop. */
static void conn_out_hand_over(struct conn *c, struct fan_cache *fc)
{
	assert(c->out_count == fc->n && !c->head_off);
	c->out_head = 0; /* as conn_out_consume: the first slots again */
	c->out_count = 0;
	c->out_bytes = 0;
	fc->owed++;
}

/* c's queue as one shared buffer, with a reference for the caller: the
 * one the previous subscriber's flush built when it holds the same
 * messages (a fan-out's subscribers are flushed one after another), else
 * a new one, which the shard keeps for the next. NULL when c's queue is
 * not such a queue or memory is short (the caller copies instead). */
static struct fan_buf *conn_fan_buf(struct conn *c)
{
	if (!conn_out_shared_q0(c))
		return NULL;
	struct shard *s = c->shard;
	struct fan_cache *fc = s->fan_cache;
	if (!fc && !(fc = s->fan_cache = calloc(1, sizeof(*fc))))
		return NULL;
	bool same = fc->buf && fc->n == c->out_count;
	for (uint32_t i = 0; same && i < fc->n; i++)
		same = fc->msg[i] == c->outq[(c->out_head + i) & (c->out_cap - 1)].msg;
	if (!same) {
		struct fan_buf *b = malloc(sizeof(*b) + c->out_bytes);
		if (!b)
			return NULL;
		fan_cache_clear(fc);
		b->refs = 1;
		b->len = (uint32_t)conn_out_copy(c, b->data, c->out_bytes);
		assert(b->len == c->out_bytes);
		for (uint32_t i = 0; i < c->out_count; i++)
			fc->msg[i] = msg_ref(
				c->outq[(c->out_head + i) & (c->out_cap - 1)].msg);
		fc->n = c->out_count;
		fc->buf = b;
	}
	fc->buf->refs++;
	return fc->buf;
}

/* The head of the wire queue as one send context. Up to SEND_COPY_BYTES
 * are copied into the context and leave the queue at once: the kernel
 * takes one buffer as a plain send (it neither imports an iovec array
 * nor copies a QoS 1 delivery's four pieces one by one), and each
 * message is released now, while it is in the cache, not when the send
 * completes. A larger backlog goes as iovecs into the entries, which
 * leave the queue as the kernel takes them. NULL when out of memory. */
/* Bytes a SEND_CTX_SMALL context holds after its first iovec. */
#define SEND_COPY_TINY_BYTES ((SEND_CTX_SMALL_IOV - 1) * sizeof(struct iovec))

static struct send_ctx *conn_flush_gather(struct conn *c)
{
	struct send_ctx *ctx;
	struct fan_buf *fan = conn_fan_buf(c);
	if (fan) {
		if (!(ctx = send_ctx_get(c->shard, SEND_CTX_SMALL))) {
			fan_buf_unref(fan);
			return NULL;
		}
		conn_out_hand_over(c, c->shard->fan_cache);
		ctx->iov[0] = (struct iovec){fan->data, fan->len};
		memset(&ctx->mh, 0, sizeof(ctx->mh));
		ctx->mh.msg_iov = ctx->iov;
		ctx->mh.msg_iovlen = 1;
		ctx->fan = fan;
		ctx->bytes = fan->data;
		ctx->bytes_len = fan->len;
		return ctx;
	}
	if (c->out_bytes <= SEND_COPY_BYTES) {
		/* A few acks or a CONNACK fit where a small context keeps its
		 * iovecs: a burst of logins then holds ~400 bytes per send in
		 * flight, not a 2 KiB buffer each. */
		unsigned cls = c->out_bytes <= SEND_COPY_TINY_BYTES ? SEND_CTX_SMALL
			       : c->out_bytes <= SEND_COPY_SMALL_BYTES
				       ? SEND_CTX_COPY_SMALL
				       : SEND_CTX_COPY;
		if (!(ctx = send_ctx_get(c->shard, cls)))
			return NULL;
		uint8_t *buf = (uint8_t *)(ctx->iov + 1);
		size_t n = conn_out_copy(c, buf, c->out_bytes);
		assert(n == c->out_bytes && n > 0);
		conn_out_consume(c, n);
		ctx->iov[0] = (struct iovec){buf, n};
		memset(&ctx->mh, 0, sizeof(ctx->mh));
		ctx->mh.msg_iov = ctx->iov;
		ctx->mh.msg_iovlen = 1;
		ctx->bytes = buf;
		ctx->bytes_len = n;
		ctx->fan = NULL;
		return ctx;
	}
	unsigned max_iov = c->out_count * OUT_ENTRY_IOV_MAX < SEND_IOV_MAX
				   ? c->out_count * OUT_ENTRY_IOV_MAX
				   : SEND_IOV_MAX;
	ctx = send_ctx_get(c->shard, max_iov > SEND_CTX_SMALL_IOV
					     ? SEND_CTX_LARGE : SEND_CTX_SMALL);
	if (!ctx)
		return NULL;
	unsigned niov = 0;
	size_t skip = c->head_off;
	for (uint32_t i = 0; i < c->out_count && niov + OUT_ENTRY_IOV_MAX <= max_iov;
	     i++) {
		struct out_entry *e = &c->outq[(c->out_head + i) & (c->out_cap - 1)];
		niov += out_entry_iov(e, skip, ctx->iov + niov);
		skip = 0;
	}
	assert(niov > 0 && niov <= max_iov);
	memset(&ctx->mh, 0, sizeof(ctx->mh));
	ctx->mh.msg_iov = ctx->iov;
	ctx->mh.msg_iovlen = niov;
	ctx->bytes = NULL;
	ctx->bytes_len = 0;
	ctx->fan = NULL;
	return ctx;
}

void conn_flush(struct conn *c)
{
	if (c->flags & CONN_SEND_BUSY)
		return;
	if (c->gate_lsn && up->persist_gated(c))
		return; /* persist_gate's ticket flushes it */
	if (c->tls) {
		conn_flush_tls(c);
		return;
	}
	if ((c->tls_flags & CONN_TLS_OWED) && ktls_send_control(c))
		return;
	if (c->ws) {
		conn_flush_ws(c);
		return;
	}
	if (!c->out_count) {
		if (c->state != CONN_CLOSING)
			return;
		if (c->flags & CONN_SHUTDOWN_SENT)
			conn_on_closed(c);
		else
			conn_shutdown(c);
		return;
	}
	struct send_ctx *ctx = conn_flush_gather(c);
	if (!ctx) {
		conn_close(c, "out of memory", false);
		return;
	}
	ctx->retired = NULL;
	ctx->owned = NULL;
	ctx->bytes_off = 0;
	ctx->record_type = 0;
	conn_submit_send(c, ctx);
}

/* A partial send of bytes the send holds goes on from where the kernel
 * stopped; a closing connection only finishes what it must flush. */
static bool conn_resend_rest(struct conn *c, struct send_ctx *ctx, int res)
{
	if (!ctx->bytes || res < 0)
		return false;
	stat_add(&c->shard->stats.bytes_sent, (uint64_t)res);
	ctx->bytes_off += (size_t)res; /* 0: the plain path sent again too */
	if (ctx->bytes_off >= ctx->bytes_len ||
	    (c->state == CONN_CLOSING && !(c->flags & CONN_CLOSE_AFTER_FLUSH)))
		return false;
	ctx->iov[0] = (struct iovec){ctx->bytes + ctx->bytes_off,
				     ctx->bytes_len - ctx->bytes_off};
	c->flags &= (uint8_t)~CONN_SEND_BUSY;
	conn_submit_send(c, ctx);
	return true;
}

void conn_on_send_done(struct conn *c, int res)
{
	struct send_ctx *ctx = c->send;
	assert(ctx && (c->flags & CONN_SEND_BUSY));
	if (conn_resend_rest(c, ctx, res))
		return;
	bool held = ctx->bytes != NULL; /* out of the queue already */
	uint8_t record_type = ctx->record_type;
	c->send = NULL;
	c->flags &= (uint8_t)~CONN_SEND_BUSY;
	send_ctx_drop_bufs(ctx);
	send_ctx_put(c->shard, ctx);
	if (record_type) {
		ktls_control_sent(c, record_type, res);
		if (c->state == CONN_CLOSING)
			conn_on_closed(c);
		else if (conn_has_output(c))
			conn_mark_dirty(c);
		return;
	}
	if (res > 0 && !held) {
		stat_add(&c->shard->stats.bytes_sent, (uint64_t)res);
		conn_out_consume(c, (size_t)res);
	}
	if (!c->out_count)
		c->flags &= (uint8_t)~CONN_DROPPING; /* caught up */
	if (c->state == CONN_CLOSING) {
		if (res <= 0 || !(c->flags & CONN_CLOSE_AFTER_FLUSH))
			conn_out_drop_all(c);
		conn_on_closed(c);
		return;
	}
	if (res < 0) {
		conn_close(c, strerror(-res), true);
		conn_on_closed(c);
		return;
	}
	if (c->outq_once) {
		/* The CONNACK went out: a client that now stays silent keeps
		 * no wire queue, and a burst of logins reuses one. */
		c->outq_once = false;
		if (!c->out_count && !c->outq_keep) {
			free(c->outq);
			c->outq = NULL;
			c->out_cap = c->out_head = 0;
		}
	}
	if (c->ktls == KTLS_STOPPING)
		ktls_try(c);
	if (conn_has_output(c))
		conn_mark_dirty(c);
}

/* ---- acks held for other shards ------------------------------------------ */

/* A retained-message lookup owed to a new subscription; it runs once
 * the SUBACK it belongs to is on the wire (spec: SUBACK first). */
struct held_retained {
	struct held_retained *next;
	uint32_t sub_id;
	uint8_t granted_qos;
	uint16_t len;
	char filter[];
};

struct held_ack {
	struct held_ack *next;
	struct held_retained *retained, **retained_tail;
	uint32_t pending; /* confirmations still to come */
	uint32_t len;
	uint8_t bytes[];
};

bool conn_held_ack_retained(struct held_ack *h, const char *filter,
			    uint16_t len, uint8_t granted_qos, uint32_t sub_id)
{
	struct held_retained *r = malloc(sizeof(*r) + len);
	if (!r)
		return false;
	r->next = NULL;
	r->sub_id = sub_id;
	r->granted_qos = granted_qos;
	r->len = len;
	memcpy(r->filter, filter, len);
	*h->retained_tail = r;
	h->retained_tail = &r->next;
	return true;
}

static void held_retained_free(struct held_ack *h)
{
	while (h->retained) {
		struct held_retained *r = h->retained;
		h->retained = r->next;
		free(r);
	}
}

struct conn_rare *conn_rare(struct conn *c)
{
	if (!c->rare)
		c->rare = calloc(1, sizeof(*c->rare));
	return c->rare;
}

struct held_ack *conn_hold_ack(struct conn *c, size_t cap)
{
	struct conn_rare *rare = conn_rare(c);
	struct held_ack *h = rare ? malloc(sizeof(*h) + cap) : NULL;
	if (!h)
		return NULL;
	h->next = NULL;
	h->retained = NULL;
	h->retained_tail = &h->retained;
	h->pending = 1; /* the handler's own, released once the ack is set */
	h->len = 0;
	struct held_ack **pp = &rare->held_acks;
	while (*pp)
		pp = &(*pp)->next;
	*pp = h;
	return h;
}

void conn_held_ack_expect(struct held_ack *h)
{
	h->pending++;
}

void conn_held_ack_set(struct held_ack *h, const uint8_t *bytes, size_t len)
{
	memcpy(h->bytes, bytes, len);
	h->len = (uint32_t)len;
}

/* One confirmation for h; acks leave strictly in packet order. */
void conn_release_ack(struct conn *c, struct held_ack *h)
{
	assert(h->pending > 0 && c->rare);
	h->pending--;
	while (c->rare->held_acks && !c->rare->held_acks->pending) {
		struct held_ack *head = c->rare->held_acks;
		c->rare->held_acks = head->next;
		conn_queue_ctrl(c, head->bytes, head->len);
		for (struct held_retained *r = head->retained; r && c->session;
		     r = r->next)
			up->route_retained(c->shard, c->session, r->filter, r->len,
				       r->granted_qos, r->sub_id);
		held_retained_free(head);
		free(head);
	}
}

void conn_queue_ack(struct conn *c, const uint8_t *bytes, size_t len)
{
	struct held_ack *h;
	if (!conn_holds_acks(c) || !(h = conn_hold_ack(c, len))) {
		conn_queue_ctrl(c, bytes, len);
		return;
	}
	conn_held_ack_set(h, bytes, len);
	conn_release_ack(c, h);
}

void conn_send_ack(struct conn *c, struct held_ack *held, const uint8_t *bytes,
		   size_t len)
{
	if (held) {
		conn_held_ack_set(held, bytes, len);
		conn_release_ack(c, held);
	} else if (len) {
		conn_queue_ack(c, bytes, len);
	}
}

static void conn_free_rare(struct conn *c)
{
	struct conn_rare *rare = c->rare;
	if (!rare)
		return;
	while (rare->held_acks) {
		struct held_ack *h = rare->held_acks;
		rare->held_acks = h->next;
		held_retained_free(h);
		free(h);
	}
	free(rare->proxy_buf);
	tls_ktls_rekey_free(rare->ktls_rekey);
	free(rare);
	c->rare = NULL;
}

/* ---- closing ------------------------------------------------------------ */

void conn_free(struct conn *c)
{
	conn_out_drop_all(c);
	free(c->outq);
	if (c->send) {
		send_ctx_drop_bufs(c->send);
		free(c->send);
	}
	if (c->will) {
		msg_unref(c->will->msg);
		free(c->will);
	}
	uint32_t in_len;
	free(conn_take_input(c, &in_len));
	free(c->username);
	free(c->pending);
	conn_free_rare(c);
	tls_conn_free(c->tls);
	ws_conn_free(c->ws);
	if (c->v5) {
		for (unsigned i = 0; i < c->v5->alias_cap; i++)
			free(c->v5->aliases ? c->v5->aliases[i].topic : NULL);
		free(c->v5->aliases);
		for (unsigned i = 0; i < c->v5->out_alias_used; i++)
			free(c->v5->out_aliases[i].topic);
		free(c->v5->out_aliases);
		free(c->v5);
	}
	free(c);
}

/* Drives a closing connection to its end: flush what must still go out,
 * then shut the socket down, then free once the kernel holds no request
 * on it. Called after every event on a closing connection. */
void conn_on_closed(struct conn *c)
{
	assert(c->state == CONN_CLOSING);
	if (conn_has_output(c) && !(c->flags & CONN_SHUTDOWN_SENT)) {
		if (!(c->flags & CONN_SEND_BUSY))
			conn_mark_dirty(c);
		return;
	}
	conn_shutdown(c);
	if (c->flags & (CONN_RECV_ARMED | CONN_SEND_BUSY | CONN_DIRTY |
			CONN_SHUTDOWN_BUSY))
		return;
	struct shard *s = c->shard;
	shard_conn_detach(s, c);
	close(c->fd);
	conn_free(c);
}

static void conn_log_close(struct conn *c, const char *reason)
{
	const struct kite_config *cfg = c->shard->cfg;
	if (!cfg->connection_messages)
		return;
	char peer[64];
	conn_peer_str(c, peer, sizeof(peer));
	if (c->state == CONN_AWAIT_CONNECT)
		log_msg(KITE_LOG_NOTICE, "Client <unknown> %s disconnected: %s",
			peer, reason);
	else
		log_msg(KITE_LOG_NOTICE, "Client %s %s disconnected: %s",
			conn_client_id(c), peer, reason);
}

/* An orderly close of an established TLS connection ends with our
 * close_notify after the last words (RFC 8446 6.1; Mosquitto calls
 * SSL_shutdown), so the client can tell it from a truncation. */
static void conn_owe_close_notify(struct conn *c)
{
	if (c->ktls == KTLS_ON ||
	    (c->tls && tls_conn_handshake_done(c->tls)))
		c->tls_flags |= CONN_TLS_OWE_CLOSE_NOTIFY;
}

void conn_close(struct conn *c, const char *reason, bool send_will)
{
	if (c->state == CONN_CLOSING)
		return;
	struct shard *s = c->shard;
	conn_log_close(c, reason);
	bool was_active = c->state == CONN_ACTIVE;
	c->state = CONN_CLOSING;
	c->last_rx_ms = (uint32_t)s->now_ms; /* closing deadline starts now */
	if (c->flags & CONN_COUNTED) {
		c->flags &= (uint8_t)~CONN_COUNTED;
		stat_sub(&s->stats.clients_connected, 1);
	}
	if (c->bridge)
		up->bridge_on_close(c);
	else
		atomic_fetch_sub(&s->b->listener_conns[c->listener], 1);
	if (c->ktls == KTLS_ON)
		stat_sub(&s->stats.tls_open_kernel, 1);
	else if (c->tls && tls_conn_handshake_done(c->tls))
		stat_sub(&s->stats.tls_open_user, 1);
	if (c->in_paused) {
		c->in_paused = false;
		s->input_paused--;
	}
	if (c->parked & PARK_RELOAD)
		s->input_parked--;
	c->parked = 0;
	if (c->will) {
		struct will *w = c->will;
		struct session *ss = c->session;
		c->will = NULL;
		if (send_will && was_active && w->delay_s && ss &&
		    !ss->delayed_will) {
			/* MQTT 5 will delay: sent later unless the client is
			 * back in time, and at the latest when the session
			 * ends (session_destroy fires it). Session expiry 0
			 * waits the delay too, as Mosquitto does
			 * (session_on_disconnect keeps the session). */
			uint32_t d = w->delay_s;
			if (ss->persistent && ss->expiry_s < d)
				d = ss->expiry_s;
			ss->delayed_will = w;
			ss->will_at_ms = s->now_ms + (uint64_t)d * 1000u;
			up->session_timer_at(s, ss->will_at_ms);
			up->persist_will(ss);
		} else if (send_will && was_active) {
			w->next = NULL;
			if (!s->wills_due)
				s->wills_due_tail = &s->wills_due;
			*s->wills_due_tail = w;
			s->wills_due_tail = &w->next;
		} else {
			msg_unref(w->msg);
			free(w);
		}
	}
	if (c->session) {
		struct session *ss = c->session;
		c->session = NULL;
		ss->conn = NULL;
		if (!ss->ending) {
			ss->ending = true;
			ss->ending_next = s->ending;
			s->ending = ss;
		}
	}
	if (!(c->flags & CONN_CLOSE_AFTER_FLUSH)) {
		/* Nothing more to say: a stalled send must not hold us (the
		 * shutdown ends it). The entries under a send in flight stay
		 * until its completion, which still counts what went out. */
		c->tls_flags &= (uint8_t)~CONN_TLS_OWED;
		if (!(c->flags & CONN_SEND_BUSY))
			conn_out_drop_all(c);
		if (c->ws)
			ws_out_drop(c->ws);
		conn_shutdown(c);
		return;
	}
	conn_owe_close_notify(c);
	if (c->flags & CONN_SEND_BUSY) {
		/* Our last words are on their way; the completion goes on
		 * (and the tick forces the end after a bound). */
	} else if (conn_has_output(c)) {
		/* Last words: a CONNACK, a DISCONNECT, or OpenSSL's alert
		 * telling the client why its handshake failed. */
		conn_mark_dirty(c);
	} else {
		conn_shutdown(c);
	}
}

void conn_settle(struct shard *s)
{
	while (s->wills_due || s->ending) {
		while (s->wills_due) {
			struct will *w = s->wills_due;
			s->wills_due = w->next;
			/* Its Message Expiry Interval runs from now. */
			w->msg->created_ms = s->now_ms;
			if (!s->stopping)
				up->route_publish(s, msg_ref(w->msg));
			msg_unref(w->msg);
			free(w);
		}
		while (s->ending) {
			struct session *ss = s->ending;
			s->ending = ss->ending_next;
			ss->ending = false;
			ss->ending_next = NULL;
			if (!ss->conn) /* not resumed meanwhile */
				up->session_on_disconnect(s, ss);
		}
	}
}

void conn_forget_ending(struct session *ss)
{
	if (!ss->ending)
		return;
	for (struct session **pp = &ss->shard->ending; *pp;
	     pp = &(*pp)->ending_next) {
		if (*pp == ss) {
			*pp = ss->ending_next;
			break;
		}
	}
	ss->ending = false;
	ss->ending_next = NULL;
}

void conn_close_after_flush(struct conn *c, const char *reason)
{
	c->flags |= CONN_CLOSE_AFTER_FLUSH;
	conn_close(c, reason, false);
}

void conn_protocol_error(struct conn *c, uint8_t rc, const char *why)
{
	if (c->state == CONN_CLOSING)
		return;
	bool will = rc != MQTT_RC_SERVER_SHUTTING_DOWN;
	if (c->version == MQTT_V5 && c->state == CONN_ACTIVE) {
		uint8_t buf[8];
		size_t n = mqtt_encode_disconnect(buf, sizeof(buf), MQTT_V5, rc,
						  NULL);
		if (n)
			conn_queue_ctrl(c, buf, n);
		c->flags |= CONN_CLOSE_AFTER_FLUSH;
	}
	conn_close(c, why, will);
}
