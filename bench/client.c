/* The MQTT side of kite-bench: CONNECT/SUBSCRIBE during setup, PUBLISH with
 * a stamped payload, the QoS 1/2 handshakes in both directions, and the
 * per-publisher sequence bookkeeping that proves delivery. Every packet is
 * built by core/codec.h's encoders and parsed by its decoders. */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"

/* The payload header, little-endian: send time (CLOCK_MONOTONIC ns),
 * publisher index, sequence number. The rest is filler. */
#define PL_TS 0
#define PL_PUB 8
#define PL_SEQ 12

static inline void put_le32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4); /* x86-64 and arm64 Linux are little-endian */
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static inline uint32_t get_le32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static inline uint64_t get_le64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "payload header is written in host order");

static struct mqtt_bytes bytes_of(const char *s, size_t len)
{
	return (struct mqtt_bytes){.ptr = (const uint8_t *)s,
				   .len = (uint32_t)len};
}

static void client_id(const struct kb *kb, uint32_t idx, char *out,
		      size_t cap)
{
	const struct kb_conn *c = &kb->conns[idx];
	const char *r = c->role == KB_ROLE_SUB	 ? "s"
			: c->role == KB_ROLE_PUB ? "p"
						 : "i";
	snprintf(out, cap, "kb%d-%s%u", (int)kb->run_id, r, c->role_idx);
}

void kb_client_established(struct kb *kb, uint32_t idx, uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	char id[KB_CLIENT_ID_MAX];
	client_id(kb, idx, id, sizeof(id));
	struct mqtt_connect cn;
	memset(&cn, 0, sizeof(cn));
	cn.version = kb->o.version;
	cn.clean_start = !kb->o.persistent;
	cn.keepalive_s = kb->o.keepalive_s;
	cn.client_id = bytes_of(id, strlen(id));
	if (kb->o.persistent && kb->o.version == MQTT_V5) {
		cn.props.present |=
			MQTT_PROP_BIT(MQTT_PROP_SESSION_EXPIRY_INTERVAL);
		cn.props.session_expiry_interval = kb->o.session_expiry_s;
	}
	uint8_t *b = kb_wbuf_reserve(kb, c, 256);
	size_t n = b ? mqtt_encode_connect(b, 256, &cn) : 0;
	if (n == 0) {
		kb_error(kb, "mqtt_encode_connect failed");
		kb->fatal = true;
		return;
	}
	kb_wbuf_commit(kb, c, n);
	c->state = KB_ST_CONNECT_SENT;
	c->last_tx_ns = now;
}

static void send_subscribe(struct kb *kb, struct kb_conn *c, uint64_t now)
{
	const struct kb_sub *s = &kb->subs[c->role_idx];
	struct mqtt_sub_entry e;
	memset(&e, 0, sizeof(e));
	e.filter = bytes_of(s->filter, s->filter_len);
	e.qos = kb->o.qos;
	size_t cap = 128 + s->filter_len;
	uint8_t *b = kb_wbuf_reserve(kb, c, cap);
	size_t n = b ? mqtt_encode_subscribe(b, cap, kb->o.version, 1, &e, 1,
					     NULL)
		     : 0;
	if (n == 0) {
		kb_error(kb, "mqtt_encode_subscribe failed");
		kb->fatal = true;
		return;
	}
	kb_wbuf_commit(kb, c, n);
	c->state = KB_ST_SUBSCRIBE_SENT;
	c->last_tx_ns = now;
}

static void setup_done(struct kb *kb, struct kb_conn *c)
{
	c->state = KB_ST_READY;
	kb->setup_ready++;
	assert(kb->setup_inflight > 0);
	kb->setup_inflight--;
}

static void send_ack(struct kb *kb, struct kb_conn *c, uint8_t type,
		     uint16_t packet_id)
{
	uint8_t *b = kb_wbuf_reserve(kb, c, 16);
	size_t n = b ? mqtt_encode_ack(b, 16, type, kb->o.version, packet_id,
				       MQTT_RC_SUCCESS, NULL)
		     : 0;
	if (n == 0) {
		kb_error(kb, "mqtt_encode_ack failed");
		kb->fatal = true;
		return;
	}
	kb_wbuf_commit(kb, c, n);
}

/* CONNACK has no decoder in core/ (brokers only send it): the variable
 * header is two bytes, then 5.0 properties, decoded with the codec. */
static int on_connack(struct kb *kb, struct kb_conn *c, const uint8_t *body,
		      size_t len, uint64_t now)
{
	if (c->state != KB_ST_CONNECT_SENT || len < 2) {
		kb->c.protocol_errors++;
		return -1;
	}
	if (body[1] != 0) {
		kb_error(kb, "CONNACK refused: reason 0x%02x", body[1]);
		kb->c.conn_failures++;
		return -1;
	}
	if (body[0] & 1) {
		/* Client ids are new in every run (kbPID-...): a broker that
		 * has a session for one hands back someone else's state. */
		kb_error(kb, "CONNACK: session present for the new client id "
			     "of connection %u", (unsigned)(c - kb->conns));
		kb->c.session_present++;
	}
	if (kb->o.version == MQTT_V5 && c->role == KB_ROLE_PUB && len > 2) {
		struct mqtt_props props;
		size_t used = 0;
		if (mqtt_props_decode(body + 2, len - 2, MQTT_PROPS_CONNACK,
				      &props, &used) != MQTT_RC_SUCCESS) {
			kb->c.protocol_errors++;
			return -1;
		}
		struct kb_pub *p = &kb->pubs[c->role_idx];
		if ((props.present &
		     MQTT_PROP_BIT(MQTT_PROP_RECEIVE_MAXIMUM)) &&
		    props.receive_maximum < p->window_eff)
			p->window_eff = props.receive_maximum;
	}
	if (c->role == KB_ROLE_SUB) {
		send_subscribe(kb, c, now);
		return 0;
	}
	setup_done(kb, c);
	if (c->role == KB_ROLE_PUB)
		kb_pub_wake(kb, c->role_idx);
	return 0;
}

static int on_suback(struct kb *kb, struct kb_conn *c, const uint8_t *body,
		     size_t len)
{
	if (c->state != KB_ST_SUBSCRIBE_SENT || len < 3) {
		kb->c.protocol_errors++;
		return -1;
	}
	size_t off = 2;
	if (kb->o.version == MQTT_V5) {
		struct mqtt_props props;
		size_t used = 0;
		if (mqtt_props_decode(body + 2, len - 2, MQTT_PROPS_SUBACK,
				      &props, &used) != MQTT_RC_SUCCESS) {
			kb->c.protocol_errors++;
			return -1;
		}
		off += used;
	}
	if (off >= len || body[off] >= 0x80) {
		kb_error(kb, "SUBACK refused the subscription (reason 0x%02x)",
			 off < len ? body[off] : 0xff);
		kb->c.conn_failures++;
		return -1;
	}
	if (body[off] != kb->o.qos) {
		kb_error(kb, "SUBACK granted QoS %u, asked %u", body[off],
			 kb->o.qos);
		kb->c.protocol_errors++;
	}
	setup_done(kb, c);
	if (kb->o.topo == KB_TOPO_STORM) {
		/* Done with this one: DISCONNECT, then wait for the broker
		 * to close the connection. */
		kb_client_disconnect(kb, (uint32_t)(c - kb->conns));
		c->state = KB_ST_DISCONNECTING;
	}
	return 0;
}

/* A subscriber got a message: check it against what its publisher sent
 * so far and credit the publisher's window. */
static void on_delivery(struct kb *kb, struct kb_conn *c,
			const struct mqtt_publish *m, uint64_t now)
{
	struct kb_sub *s = &kb->subs[c->role_idx];
	kb->c.recv++;
	s->recv++;
	if (m->payload.len < KB_PAYLOAD_MIN) {
		kb->c.unexpected++;
		return;
	}
	const uint8_t *pl = m->payload.ptr;
	uint64_t ts = get_le64(pl + PL_TS);
	uint32_t pidx = get_le32(pl + PL_PUB);
	uint32_t seq = get_le32(pl + PL_SEQ);
	if (pidx < s->pub_lo || pidx - s->pub_lo >= s->pub_n ||
	    pidx >= kb->npubs) {
		kb->c.unexpected++;
		return;
	}
	struct kb_track *t = &kb->tracks[s->track_off + (pidx - s->pub_lo)];
	bool fresh = true;
	if (seq == t->next) {
		t->next++;
	} else if (seq > t->next) {
		t->gaps += seq - t->next;
		t->next = seq + 1;
	} else if (m->dup) {
		kb->c.dups_flagged++;
		fresh = false;
	} else if (t->gaps > 0) {
		/* Older than the newest seen: it fills a gap (it arrived out
		 * of order). Without a per-message bitmap a duplicate of an
		 * already received message would count here too; with
		 * in-order brokers neither should ever happen. */
		t->gaps--;
		kb->c.reordered++;
	} else {
		kb->c.dups++;
		fresh = false;
	}
	if (fresh) {
		kb->c.unique++;
		struct kb_pub *p = &kb->pubs[pidx];
		if (p->out_deliv > 0) {
			p->out_deliv--;
			kb->g_out--;
			kb_pub_wake(kb, pidx);
		}
	}
	kb->last_progress_ns = now;
	if (kb->phase == KB_PH_MEASURE) {
		kb->recv_win++;
		kb_hist_add(&kb->lat, now >= ts ? now - ts : 0);
	}
}

/* The common delivery, taken apart in place: the topic is byte for byte
 * the one the payload's publisher sent (so it was valid when we encoded
 * it), no properties, a packet id when QoS > 0, a stamped payload. Returns
 * false for anything else, which then goes through mqtt_decode_publish
 * and all its checks; the codec's general decoder (topic UTF-8 scan,
 * property table) was a fifth of the generator's work in fan-out. */
static bool publish_fast(const struct kb *kb, uint8_t flags,
			 const uint8_t *body, size_t len,
			 struct mqtt_publish *m)
{
	uint8_t qos = (flags >> 1) & 0x3;
	if (qos == 3 || ((flags & 0x8) && qos == 0) || len < 2)
		return false;
	size_t tlen = (size_t)body[0] << 8 | body[1];
	size_t off = 2 + tlen;
	m->packet_id = 0;
	if (qos > 0) {
		if (off + 2 > len || (body[off] | body[off + 1]) == 0)
			return false;
		m->packet_id = (uint16_t)(body[off] << 8 | body[off + 1]);
		off += 2;
	}
	if (kb->o.version == MQTT_V5) {
		if (off >= len || body[off] != 0)
			return false; /* properties: the codec decodes them */
		off++;
	}
	if (off + KB_PAYLOAD_MIN > len)
		return false;
	uint32_t pidx = get_le32(body + off + PL_PUB);
	if (pidx >= kb->npubs || kb->pubs[pidx].topic_len != tlen ||
	    memcmp(kb->pubs[pidx].topic, body + 2, tlen) != 0)
		return false;
	m->qos = qos;
	m->dup = (flags & 0x8) != 0;
	m->retain = flags & 0x1;
	m->topic = (struct mqtt_bytes){.ptr = body + 2, .len = (uint32_t)tlen};
	m->payload = (struct mqtt_bytes){.ptr = body + off,
					 .len = (uint32_t)(len - off)};
	return true;
}

static int on_publish(struct kb *kb, struct kb_conn *c, uint8_t flags,
		      const uint8_t *body, size_t len, uint64_t now)
{
	struct mqtt_publish m;
	enum mqtt_rc rc = MQTT_RC_SUCCESS;
	if (!publish_fast(kb, flags, body, len, &m))
		rc = mqtt_decode_publish(flags, body, len, kb->o.version, &m);
	if (rc != MQTT_RC_SUCCESS || c->role != KB_ROLE_SUB ||
	    c->state != KB_ST_READY) {
		kb->c.protocol_errors++;
		return -1;
	}
	on_delivery(kb, c, &m, now);
	if (m.qos == 1)
		send_ack(kb, c, MQTT_PUBACK, m.packet_id);
	else if (m.qos == 2)
		send_ack(kb, c, MQTT_PUBREC, m.packet_id);
	return 0;
}

/* PUBACK (QoS 1) or PUBREC/PUBCOMP (QoS 2) for one of our publishes. */
static int on_pub_ack(struct kb *kb, struct kb_conn *c, uint8_t type,
		      const uint8_t *body, size_t len)
{
	struct mqtt_ack a;
	if (mqtt_decode_ack(body, len, kb->o.version, &a) != MQTT_RC_SUCCESS) {
		kb->c.protocol_errors++;
		return -1;
	}
	if (c->role == KB_ROLE_SUB) {
		/* Only PUBREL reaches a subscriber: QoS 2, step 3. */
		if (type != MQTT_PUBREL) {
			kb->c.bad_acks++;
			return 0;
		}
		send_ack(kb, c, MQTT_PUBCOMP, a.packet_id);
		return 0;
	}
	struct kb_pub *p = &kb->pubs[c->role_idx];
	uint32_t slot = (uint32_t)a.packet_id - 1;
	uint8_t want = type == MQTT_PUBCOMP ? 2 : 1;
	bool ok = p->slots && a.packet_id != 0 && slot < kb->o.window &&
		  p->slots[slot] == want &&
		  ((type == MQTT_PUBACK) == (kb->o.qos == 1));
	if (!ok || type == MQTT_PUBREL) {
		kb->c.bad_acks++;
		return 0;
	}
	if (a.reason >= 0x80) {
		kb_error(kb, "publish refused: reason 0x%02x", a.reason);
		kb->c.bad_acks++;
	}
	if (type == MQTT_PUBREC) {
		p->slots[slot] = 2;
		send_ack(kb, c, MQTT_PUBREL, a.packet_id);
		return 0;
	}
	p->slots[slot] = 0;
	p->unacked--;
	kb->c.acks++;
	kb_pub_wake(kb, c->role_idx);
	return 0;
}

static int on_packet(struct kb *kb, struct kb_conn *c,
		     const struct mqtt_fixed_header *fh, const uint8_t *body,
		     size_t len, uint64_t now)
{
	switch (fh->type) {
	case MQTT_PUBLISH:
		return on_publish(kb, c, fh->flags, body, len, now);
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
		kb->last_progress_ns = now;
		return on_pub_ack(kb, c, fh->type, body, len);
	case MQTT_CONNACK:
		return on_connack(kb, c, body, len, now);
	case MQTT_SUBACK:
		return on_suback(kb, c, body, len);
	case MQTT_PINGRESP:
		return 0;
	case MQTT_DISCONNECT: {
		struct mqtt_disconnect d;
		memset(&d, 0, sizeof(d));
		if (kb->o.version == MQTT_V5)
			mqtt_decode_disconnect(body, len, kb->o.version, &d);
		kb_error(kb, "broker sent DISCONNECT (reason 0x%02x)", d.reason);
		return -1;
	}
	default:
		kb->c.protocol_errors++;
		return -1;
	}
}

ssize_t kb_client_input(struct kb *kb, uint32_t idx, const uint8_t *buf,
			size_t len, uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	size_t off = 0;
	while (off < len) {
		struct mqtt_fixed_header fh;
		enum mqtt_frame_status st =
			mqtt_frame_parse(buf + off, len - off, &fh);
		if (st == MQTT_FRAME_NEED_MORE)
			break;
		if (st != MQTT_FRAME_OK) {
			kb->c.protocol_errors++;
			kb_error(kb, "malformed packet from broker");
			return -1;
		}
		size_t total = (size_t)fh.header_len + fh.remaining_len;
		if (total > KB_PACKET_MAX) {
			kb->c.protocol_errors++;
			kb_error(kb, "packet of %zu bytes from broker", total);
			return -1;
		}
		if (total > len - off)
			break;
		if (on_packet(kb, c, &fh, buf + off + fh.header_len,
			      fh.remaining_len, now) != 0)
			return -1;
		off += total;
		if (c->state == KB_ST_CLOSED)
			break;
	}
	return (ssize_t)off;
}

void kb_client_closed(struct kb *kb, uint32_t idx)
{
	struct kb_conn *c = &kb->conns[idx];
	if (c->state == KB_ST_CLOSED)
		return;
	if (c->state != KB_ST_READY && c->state != KB_ST_QUEUED &&
	    kb->setup_inflight > 0)
		kb->setup_inflight--;
	if (kb->phase != KB_PH_DONE) {
		kb->c.conn_closed++;
		if (kb->c.conn_closed <= 3)
			kb_error(kb, "connection %u (%s %u) closed by the broker",
				 idx,
				 c->role == KB_ROLE_SUB	  ? "subscriber"
				 : c->role == KB_ROLE_PUB ? "publisher"
							  : "idle client",
				 c->role_idx);
	}
}

enum kb_pub_block kb_pub_can_send(const struct kb *kb, const struct kb_pub *p)
{
	const struct kb_conn *c = &kb->conns[p->conn];
	if (c->state != KB_ST_READY || kb_conn_pending(c) >= KB_WBUF_SOFT)
		return KB_PUB_BLOCKED;
	if (p->out_deliv + p->fanout > (uint64_t)kb->o.window * p->fanout)
		return KB_PUB_BLOCKED;
	if (kb->o.qos > 0) {
		if (p->unacked >= p->window_eff)
			return KB_PUB_BLOCKED;
		if (p->slots[p->seq % kb->o.window] != 0)
			return KB_PUB_BLOCKED;
	}
	/* Always let one message through when nothing is in flight, so a
	 * fan-out wider than max_outstanding still moves. */
	if (kb->g_out > 0 && kb->g_out + p->fanout > kb->o.max_outstanding)
		return KB_PUB_BLOCKED_ALL;
	return KB_PUB_OK;
}

void kb_pub_wake(struct kb *kb, uint32_t pidx)
{
	struct kb_pub *p = &kb->pubs[pidx];
	if (p->queued)
		return;
	assert(kb->ready_n < kb->npubs);
	p->queued = true;
	kb->ready[(kb->ready_head + kb->ready_n++) % kb->npubs] = pidx;
}

void kb_pub_send(struct kb *kb, uint32_t pidx, uint64_t now)
{
	struct kb_pub *p = &kb->pubs[pidx];
	struct kb_conn *c = &kb->conns[p->conn];
	uint8_t *pl = kb->payload;
	put_le64(pl + PL_TS, now);
	put_le32(pl + PL_PUB, pidx);
	put_le32(pl + PL_SEQ, p->seq);
	struct mqtt_publish m;
	memset(&m, 0, sizeof(m));
	m.topic = bytes_of(p->topic, p->topic_len);
	m.payload = (struct mqtt_bytes){.ptr = pl, .len = kb->o.payload};
	m.qos = kb->o.qos;
	uint32_t slot = 0;
	if (m.qos > 0) {
		slot = p->seq % kb->o.window;
		m.packet_id = (uint16_t)(slot + 1);
	}
	size_t cap = (size_t)kb->o.payload + p->topic_len + 32;
	uint8_t *b = kb_wbuf_reserve(kb, c, cap);
	size_t n = b ? mqtt_encode_publish(b, cap, kb->o.version, &m, NULL) : 0;
	if (n == 0) {
		kb_error(kb, "mqtt_encode_publish failed");
		kb->fatal = true;
		return;
	}
	kb_wbuf_commit(kb, c, n);
	if (m.qos > 0) {
		p->slots[slot] = 1;
		p->unacked++;
	}
	p->seq++;
	p->out_deliv += p->fanout;
	kb->g_out += p->fanout;
	kb->expected += p->fanout;
	kb->c.sent++;
	c->last_tx_ns = now;
	if (kb->phase == KB_PH_MEASURE)
		kb->sent_win++;
}

/* PINGREQ and the 3.1.1 DISCONNECT are two fixed bytes with nothing to
 * encode; the codec has no client-side encoder for them. */
static const uint8_t pingreq[2] = {MQTT_PINGREQ << 4, 0};
static const uint8_t disconnect_v3[2] = {MQTT_DISCONNECT << 4, 0};

void kb_client_ping(struct kb *kb, uint32_t idx, uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	uint8_t *b = kb_wbuf_reserve(kb, c, sizeof(pingreq));
	if (!b)
		return;
	memcpy(b, pingreq, sizeof(pingreq));
	kb_wbuf_commit(kb, c, sizeof(pingreq));
	c->last_tx_ns = now;
}

void kb_client_disconnect(struct kb *kb, uint32_t idx)
{
	struct kb_conn *c = &kb->conns[idx];
	if (c->state != KB_ST_READY)
		return;
	if (kb->o.version == MQTT_V5) {
		uint8_t *b5 = kb_wbuf_reserve(kb, c, 16);
		size_t n = b5 ? mqtt_encode_disconnect(b5, 16, MQTT_V5,
						       MQTT_RC_SUCCESS, NULL)
			      : 0;
		if (n)
			kb_wbuf_commit(kb, c, n);
		return;
	}
	uint8_t *b = kb_wbuf_reserve(kb, c, sizeof(disconnect_v3));
	if (!b)
		return;
	memcpy(b, disconnect_v3, sizeof(disconnect_v3));
	kb_wbuf_commit(kb, c, sizeof(disconnect_v3));
}
