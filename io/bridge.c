/* Bridges (io/bridge.h): an outgoing MQTT client connection per
 * `connection` block, driven by the owning shard's io_uring. */
#include "io/bridge.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/mqtt.h"
#include "core/topic.h"
#include "io/conn.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/session.h"
#include "io/shard.h"

enum bridge_state {
	BRIDGE_IDLE,	   /* waiting for next_try_ms */
	BRIDGE_CONNECTING, /* TCP connect in flight */
	BRIDGE_HANDSHAKE,  /* TLS handshake, then CONNECT/CONNACK */
	BRIDGE_UP,	   /* CONNACK accepted */
	BRIDGE_STOPPED,	   /* start_type once, after its connection ended */
	BRIDGE_LAZY,	   /* start_type lazy: until `threshold` are queued */
};

struct bridge {
	struct shard *s;
	unsigned idx;
	struct kite_bridge_cfg cfg; /* bridges are not reloaded (Mosquitto) */
	struct session *ss;
	struct conn *conn; /* the current connection, NULL when none */
	int fd;		   /* during the TCP connect */
	uint32_t gen;	   /* connect attempts, for the completion */
	uint8_t state;
	unsigned addr;		/* addrs[] index tried last */
	uint64_t next_try_ms;
	uint32_t backoff_s;	/* the last jittered delay */
	uint64_t last_ping_ms;
	uint64_t last_msg_ms;	/* a PUBLISH either way: lazy's idle_timeout */
	int notify;		/* state to publish locally: -1 none, 0, 1 */
	struct sockaddr_storage sa;
	socklen_t sa_len;
	struct tls_client *tls;
	bool local_clean; /* local_cleansession (or cleansession) true */
};

/* ---- helpers --------------------------------------------------------------- */

static struct bridge *bridge_of(struct conn *c)
{
	return c->bridge;
}

/* Mosquitto's "decorrelated jitter" between base and cap, or a constant
 * delay without a cap. */
static uint32_t bridge_backoff(struct bridge *b)
{
	uint32_t base = b->cfg.restart_base_s, cap = b->cfg.restart_cap_s;
	if (!cap)
		return base;
	uint32_t prev = b->backoff_s ? b->backoff_s : base;
	uint64_t hi = (uint64_t)prev * 3u;
	uint32_t d = base + (uint32_t)(random() % (hi > base ? hi - base + 1 : 1));
	if (d > cap)
		d = cap;
	b->backoff_s = d;
	return d;
}

/* A lazy bridge (Mosquitto's start_type lazy) connects only once its
 * local session holds `threshold` messages for the remote, and no sooner
 * than its back-off allows. */
static void bridge_schedule(struct bridge *b, uint32_t delay_s)
{
	b->state = b->cfg.start_type == 1 ? BRIDGE_LAZY : BRIDGE_IDLE;
	b->next_try_ms = b->s->now_ms + (uint64_t)delay_s * 1000u;
}

static bool bridge_lazy_due(const struct bridge *b)
{
	const struct session *ss = b->ss;
	return b->s->now_ms >= b->next_try_ms &&
	       (uint64_t)ss->q_count + ss->inflight_count >= b->cfg.threshold;
}

/* A retained state message ("1" or "0") on the local broker. */
static void bridge_notify_local(struct bridge *b, int up)
{
	if (!b->cfg.notifications)
		return;
	const char *t = b->cfg.notification_topic;
	uint8_t payload = up ? '1' : '0';
	struct msg *m = msg_new((const uint8_t *)t, (uint16_t)strlen(t),
				&payload, 1, 1, true, NULL, 0);
	if (!m)
		return;
	m->created_ms = b->s->now_ms;
	route_publish(b->s, m);
}

/* ---- the connection -------------------------------------------------------- */

static int bridge_resolve(struct bridge *b, const struct kite_bridge_addr *a)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL;
	char port[8];
	snprintf(port, sizeof(port), "%u", a->port);
	/* Blocking only for a host name (a numeric address is parsed); the
	 * shard waits for the resolver then, as Mosquitto's main loop does. */
	int rc = getaddrinfo(a->host, port, &hints, &res);
	if (rc) {
		log_msg(KITE_LOG_WARNING, "Bridge %s: cannot resolve %s: %s",
			b->cfg.name, a->host, gai_strerror(rc));
		return -1;
	}
	memcpy(&b->sa, res->ai_addr, res->ai_addrlen);
	b->sa_len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int bridge_bind(struct bridge *b, int fd)
{
	if (!b->cfg.bind_address[0])
		return 0;
	struct addrinfo hints = {.ai_family = b->sa.ss_family,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	if (getaddrinfo(b->cfg.bind_address, NULL, &hints, &res))
		return -1;
	int rc = bind(fd, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return rc;
}

static void bridge_try(struct bridge *b)
{
	struct shard *s = b->s;
	const struct kite_bridge_addr *a = &b->cfg.addrs[b->addr];
	log_msg(KITE_LOG_NOTICE, "Connecting bridge %s (%s:%u)", b->cfg.name,
		a->host, a->port);
	b->notify = 0;
	int fd = -1;
	if (bridge_resolve(b, a) < 0 ||
	    (fd = socket(b->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    bridge_bind(b, fd) < 0) {
		if (fd >= 0)
			close(fd);
		b->addr = (b->addr + 1) % b->cfg.addr_count;
		bridge_schedule(b, bridge_backoff(b));
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	b->fd = fd;
	b->gen++;
	b->state = BRIDGE_CONNECTING;
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&b->sa, b->sa_len);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_BRIDGE, b->idx, b->gen));
}

static void bridge_peer(struct bridge *b, struct sockaddr_in6 *peer)
{
	memset(peer, 0, sizeof(*peer));
	peer->sin6_family = AF_INET6;
	if (b->sa.ss_family == AF_INET6) {
		memcpy(peer, &b->sa, sizeof(*peer));
		return;
	}
	const struct sockaddr_in *in = (const struct sockaddr_in *)&b->sa;
	peer->sin6_port = in->sin_port;
	peer->sin6_addr.s6_addr[10] = 0xff;
	peer->sin6_addr.s6_addr[11] = 0xff;
	memcpy(&peer->sin6_addr.s6_addr[12], &in->sin_addr, 4);
}

static void bridge_send_connect(struct bridge *b)
{
	struct conn *c = b->conn;
	const struct kite_bridge_cfg *k = &b->cfg;
	struct mqtt_connect cn = {0};
	cn.version = k->protocol;
	cn.clean_start = k->cleansession;
	cn.keepalive_s = (uint16_t)k->keepalive_s;
	cn.client_id = (struct mqtt_bytes){(const uint8_t *)k->remote_clientid,
					   (uint32_t)strlen(k->remote_clientid)};
	if (k->remote_username[0]) {
		cn.has_username = true;
		cn.username = (struct mqtt_bytes){
			(const uint8_t *)k->remote_username,
			(uint32_t)strlen(k->remote_username)};
	}
	if (k->remote_password_set) {
		cn.has_password = true;
		cn.password = (struct mqtt_bytes){
			(const uint8_t *)k->remote_password,
			(uint32_t)strlen(k->remote_password)};
	}
	static const uint8_t zero = '0';
	if (k->notifications && !k->notifications_local_only) {
		/* The remote tells its clients we are gone. */
		cn.has_will = true;
		cn.will.topic = (struct mqtt_bytes){
			(const uint8_t *)k->notification_topic,
			(uint32_t)strlen(k->notification_topic)};
		cn.will.payload = (struct mqtt_bytes){&zero, 1};
		cn.will.qos = 1;
		cn.will.retain = true;
	}
	if (k->protocol == MQTT_V5) {
		/* As Mosquitto 2.0.11 does: its receive maximum, and no
		 * session expiry (the remote session ends with the
		 * connection; what we owe the remote waits here). */
		uint32_t rmax = b->s->cfg->max_inflight_messages;
		cn.props.present |= MQTT_PROP_BIT(MQTT_PROP_RECEIVE_MAXIMUM);
		cn.props.receive_maximum = (uint16_t)(rmax && rmax < 65535 ? rmax : 65535);
	}
	uint8_t buf[2048];
	size_t n = mqtt_encode_connect(buf, sizeof(buf), &cn);
	if (!n) {
		conn_close(c, "bridge CONNECT too large", false);
		return;
	}
	if (k->try_private && k->protocol != MQTT_V5) {
		/* Mosquitto's bridge bit on the protocol level (0x80 | level):
		 * a Mosquitto remote then never sends our own messages back. */
		size_t off = 1;
		while (buf[off] & 0x80)
			off++;
		off += 1 + 2 + (k->protocol == MQTT_V31 ? 6 : 4);
		buf[off] |= 0x80;
	}
	conn_queue_ctrl(c, buf, n);
}

static void bridge_on_connected(struct bridge *b, int fd)
{
	struct shard *s = b->s;
	struct conn *c = calloc(1, sizeof(*c));
	if (c && b->tls && !(c->tls = tls_client_conn_new(b->tls, b->cfg.addrs[b->addr].host,
						  !b->cfg.insecure))) {
		free(c);
		c = NULL;
	}
	if (!c || shard_conn_attach(s, c) < 0) {
		if (c)
			tls_conn_free(c->tls);
		free(c);
		close(fd);
		log_msg(KITE_LOG_ERR, "Bridge %s: out of memory", b->cfg.name);
		bridge_schedule(b, bridge_backoff(b));
		return;
	}
	c->fd = fd;
	c->bridge = b;
	c->state = CONN_AWAIT_CONNECT;
	c->version = b->cfg.protocol;
	c->created_ms = c->last_rx_ms = (uint32_t)s->now_ms;
	bridge_peer(b, &c->peer);
	b->conn = c;
	b->state = BRIDGE_HANDSHAKE;
	shard_arm_recv(s, c);
	if (c->tls)
		conn_mark_dirty(c); /* the ClientHello; CONNECT once done */
	else
		bridge_send_connect(b);
}

/* A clean local session keeps nothing for a remote it could not reach:
 * what was published while it tried (kept in case the link came up) goes
 * with the attempt, as what comes while it waits is dropped at once. */
static void bridge_drop_unsent(struct bridge *b)
{
	if (b->local_clean && b->ss && b->ss->q_count) {
		log_msg(KITE_LOG_INFO, "Bridge %s: %u messages for the remote "
			"dropped (local_cleansession: the link did not come up)",
			b->cfg.name, b->ss->q_count);
		session_drop_queue(b->ss);
	}
}

void bridge_on_connect_cqe(struct shard *s, uint32_t id, uint32_t gen, int res)
{
	if (id >= s->bridge_count)
		return;
	struct bridge *b = s->bridges[id];
	if (b->gen != gen || b->state != BRIDGE_CONNECTING)
		return;
	int fd = b->fd;
	b->fd = -1;
	if (res < 0 || s->stopping) {
		close(fd);
		if (s->stopping)
			return;
		log_msg(KITE_LOG_NOTICE, "Bridge %s: connecting to %s:%u failed: %s",
			b->cfg.name, b->cfg.addrs[b->addr].host,
			b->cfg.addrs[b->addr].port, strerror(-res));
		bridge_drop_unsent(b);
		/* Failover: the next address at once, the first again after
		 * the back-off. */
		b->addr = (b->addr + 1) % b->cfg.addr_count;
		if (b->cfg.start_type == 2)
			b->state = BRIDGE_STOPPED;
		else
			bridge_schedule(b, b->addr ? 0 : bridge_backoff(b));
		return;
	}
	bridge_on_connected(b, fd);
}

/* TLS: the handshake with the remote is done; now the CONNECT. */
void bridge_on_tls_ready(struct conn *c)
{
	struct bridge *b = bridge_of(c);
	if (b && b->conn == c && b->state == BRIDGE_HANDSHAKE)
		bridge_send_connect(b);
}

void bridge_on_close(struct conn *c)
{
	struct bridge *b = bridge_of(c);
	if (!b || b->conn != c)
		return;
	b->conn = NULL;
	bool was_up = b->state == BRIDGE_UP;
	if (b->s->stopping)
		return;
	if (was_up)
		b->notify = 0; /* published by the tick, outside this close */
	if (b->cfg.start_type == 2) {
		b->state = BRIDGE_STOPPED;
		return;
	}
	if (!was_up) {
		bridge_drop_unsent(b);
		b->addr = (b->addr + 1) % b->cfg.addr_count;
	}
	else
		b->backoff_s = 0;
	/* A failed attempt tries the next address at once; a connection
	 * that worked is retried after the back-off. */
	bridge_schedule(b, was_up || !b->addr ? bridge_backoff(b) : 0);
}

/* ---- packets from the remote ---------------------------------------------- */

static void bridge_subscribe_remote(struct bridge *b)
{
	struct conn *c = b->conn;
	const struct kite_bridge_cfg *k = &b->cfg;
	for (unsigned i = 0; i < k->topic_count; i++) {
		const struct kite_bridge_topic *t = &k->topics[i];
		uint8_t buf[KITE_BRIDGE_TOPIC_MAX + KITE_BRIDGE_PREFIX_MAX + 32];
		struct mqtt_sub_entry e = {
			.filter = {(const uint8_t *)t->remote_topic,
				   (uint32_t)strlen(t->remote_topic)},
			.qos = t->qos,
			/* MQTT 5: the remote never sends our messages back. */
			.no_local = k->protocol == MQTT_V5,
			.retain_as_published = k->protocol == MQTT_V5,
		};
		/* An id only for a packet sent: a message queued while the
		 * remote was away then goes out with the id Mosquitto gives
		 * it (1 for the first), Mosquitto numbering it when queued. */
		size_t n = 0;
		if (t->dir & BRIDGE_IN) {
			n = mqtt_encode_subscribe(buf, sizeof(buf), k->protocol,
						  session_next_pid(b->ss), &e,
						  1, NULL);
		} else if (k->attempt_unsubscribe) {
			uint16_t pid = session_next_pid(b->ss);
			/* An out topic: drop what an earlier in topic of the
			 * same name left on a persistent remote session. */
			uint8_t *p = buf;
			size_t tl = strlen(t->remote_topic);
			size_t body = 2 + (k->protocol == MQTT_V5 ? 1 : 0) + 2 + tl;
			*p++ = (uint8_t)(MQTT_UNSUBSCRIBE << 4 | 2);
			p += mqtt_varint_encode(p, (uint32_t)body);
			*p++ = (uint8_t)(pid >> 8);
			*p++ = (uint8_t)pid;
			if (k->protocol == MQTT_V5)
				*p++ = 0;
			*p++ = (uint8_t)(tl >> 8);
			*p++ = (uint8_t)tl;
			memcpy(p, t->remote_topic, tl);
			n = (size_t)(p - buf) + tl;
		}
		if (n)
			conn_queue_ctrl(c, buf, n);
	}
}

/* The remote's own retained state message ("1"), after the CONNACK. */
static void bridge_notify_remote(struct bridge *b)
{
	const struct kite_bridge_cfg *k = &b->cfg;
	if (!k->notifications || k->notifications_local_only)
		return;
	uint8_t one = '1';
	struct msg *m = msg_new((const uint8_t *)k->notification_topic,
				(uint16_t)strlen(k->notification_topic), &one,
				1, 1, true, NULL, 0);
	if (!m)
		return;
	m->created_ms = b->s->now_ms;
	struct deliv d = {.qos = 1, .retain = true};
	session_deliver_as_is(b->ss, m, &d);
	msg_unref(m);
}

static bool bridge_on_connack(struct bridge *b, const uint8_t *body,
			      size_t len)
{
	struct conn *c = b->conn;
	if (len < 2) {
		conn_close(c, "malformed CONNACK from the remote", false);
		return false;
	}
	uint8_t rc = body[1];
	if (rc != 0) {
		log_msg(KITE_LOG_ERR, "Bridge %s: connection refused by the remote "
			"(reason 0x%02x)", b->cfg.name, rc);
		conn_close(c, "CONNACK refused", false);
		return false;
	}
	if (c->version == MQTT_V5) {
		struct mqtt_props p = {0};
		size_t used;
		if (mqtt_props_decode(body + 2, len - 2, MQTT_PROPS_CONNACK, &p,
				      &used) != MQTT_RC_SUCCESS) {
			conn_close(c, "malformed CONNACK from the remote", false);
			return false;
		}
		c->v5 = calloc(1, sizeof(*c->v5));
		if (!c->v5) {
			conn_close(c, "out of memory", false);
			return false;
		}
		if (p.present & MQTT_PROP_BIT(MQTT_PROP_RECEIVE_MAXIMUM))
			c->v5->receive_max = p.receive_maximum;
		if (p.present & MQTT_PROP_BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE))
			c->v5->max_packet = p.maximum_packet_size;
		if (b->cfg.max_packet_size &&
		    (!c->v5->max_packet || b->cfg.max_packet_size < c->v5->max_packet))
			c->v5->max_packet = b->cfg.max_packet_size;
	}
	log_msg(KITE_LOG_NOTICE, "Bridge %s connected to %s:%u", b->cfg.name,
		b->cfg.addrs[b->addr].host, b->cfg.addrs[b->addr].port);
	c->state = CONN_ACTIVE;
	c->keepalive_s = (uint16_t)b->cfg.keepalive_s;
	b->state = BRIDGE_UP;
	b->backoff_s = 0;
	b->last_ping_ms = b->s->now_ms;
	b->last_msg_ms = b->s->now_ms;
	c->session = b->ss;
	b->ss->conn = c;
	bridge_subscribe_remote(b);
	/* What the remote did not acknowledge goes again (DUP), then the
	 * queue, in order. */
	session_resume(b->ss);
	bridge_notify_remote(b);
	b->notify = 1;
	return true;
}

bool bridge_on_packet(struct conn *c, const struct mqtt_fixed_header *h,
		      const uint8_t *body)
{
	struct bridge *b = bridge_of(c);
	size_t len = h->remaining_len;
	if (c->state == CONN_AWAIT_CONNECT) {
		if (h->type != MQTT_CONNACK) {
			conn_close(c, "the remote's first packet was not CONNACK",
				   false);
			return false;
		}
		return bridge_on_connack(b, body, len);
	}
	int rc = 0;
	switch (h->type) {
	case MQTT_PUBLISH:
		b->last_msg_ms = b->s->now_ms;
		rc = conn_handle(c, h, body, len);
		break;
	case MQTT_PUBACK:
	case MQTT_PUBREC:
	case MQTT_PUBREL:
	case MQTT_PUBCOMP:
	/* A server sends no PINGREQ (spec 3.12), but Mosquitto's bridge
	 * answers one and stays up; a PINGRESP costs nothing, and closing
	 * would drop a working bridge over a harmless packet. */
	case MQTT_PINGREQ:
		rc = conn_handle(c, h, body, len);
		break;
	case MQTT_SUBACK:
		for (size_t i = 2; i < len; i++)
			if (body[i] >= 0x80 && (c->version != MQTT_V5 || i > 2))
				log_msg(KITE_LOG_WARNING, "Bridge %s: the remote "
					"refused a subscription (0x%02x)",
					b->cfg.name, body[i]);
		break;
	case MQTT_UNSUBACK:
	case MQTT_PINGRESP:
		break;
	case MQTT_DISCONNECT:
		conn_close(c, "disconnected by the remote", false);
		return false;
	default:
		conn_close(c, "packet type not allowed from a server (protocol error)",
			   false);
		return false;
	}
	if (rc < 0)
		return false;
	return c->state == CONN_ACTIVE;
}

/* ---- topic mapping --------------------------------------------------------- */

static bool starts_with(const char *t, size_t tlen, const char *prefix,
			size_t plen)
{
	return tlen >= plen && !memcmp(t, prefix, plen);
}

/* The topic with `from` replaced by `to` at its start: malloc'd. */
static char *swap_prefix(const char *t, size_t tlen, const char *from,
			 const char *to, size_t *outlen)
{
	size_t fl = strlen(from), tl = strlen(to);
	if (!starts_with(t, tlen, from, fl))
		fl = 0;
	size_t n = tlen - fl + tl;
	if (n > 65535)
		return NULL;
	char *o = malloc(n + 1);
	if (!o)
		return NULL;
	memcpy(o, to, tl);
	memcpy(o + tl, t + fl, tlen - fl);
	o[n] = 0;
	*outlen = n;
	return o;
}

char *bridge_map_in(struct conn *c, struct mqtt_bytes *topic)
{
	struct bridge *b = bridge_of(c);
	const char *t = (const char *)topic->ptr;
	for (unsigned i = 0; i < b->cfg.topic_count; i++) {
		const struct kite_bridge_topic *bt = &b->cfg.topics[i];
		if (!(bt->dir & BRIDGE_IN) ||
		    !topic_matches(bt->remote_topic, strlen(bt->remote_topic), t,
				   topic->len))
			continue;
		if (!strcmp(bt->local_prefix, bt->remote_prefix))
			return NULL;
		size_t n;
		char *o = swap_prefix(t, topic->len, bt->remote_prefix,
				      bt->local_prefix, &n);
		if (o)
			*topic = (struct mqtt_bytes){(const uint8_t *)o, (uint32_t)n};
		return o;
	}
	return NULL;
}

void bridge_deliver(struct session *ss, struct msg *m, const struct deliv *d)
{
	struct bridge *b = ss->bridge;
	const char *t = msg_topic(m);
	const struct kite_bridge_topic *bt = NULL;
	if (b->local_clean && !b->conn && b->state != BRIDGE_CONNECTING) {
		/* A clean local session keeps nothing for a remote it is
		 * not connected to: Mosquitto drops such messages (its
		 * 06-bridge-clean-session test), and a lazy bridge is not
		 * woken by them either. */
		shard_stats_drop(ss->shard, DROP_OFFLINE, 1);
		return;
	}
	b->last_msg_ms = b->s->now_ms;
	for (unsigned i = 0; i < b->cfg.topic_count && !bt; i++) {
		const struct kite_bridge_topic *x = &b->cfg.topics[i];
		if ((x->dir & BRIDGE_OUT) &&
		    topic_matches(x->local_topic, strlen(x->local_topic), t,
				  m->topic_len))
			bt = x;
	}
	struct deliv dd = *d;
	if (!b->cfg.outgoing_retain)
		dd.retain = false;
	if (!bt || !strcmp(bt->local_prefix, bt->remote_prefix)) {
		session_deliver_as_is(ss, m, &dd);
		return;
	}
	size_t n;
	char *o = swap_prefix(t, m->topic_len, bt->local_prefix,
			      bt->remote_prefix, &n);
	struct msg *mm = o ? msg_new((const uint8_t *)o, (uint16_t)n,
				     msg_payload(m), m->payload_len, m->qos,
				     m->retain, msg_props_wire(m).iov_base,
				     m->props_len)
			   : NULL;
	free(o);
	if (!mm) {
		shard_stats_drop(ss->shard, DROP_NO_MEMORY, 1);
		return;
	}
	mm->origin = m->origin;
	mm->created_ms = m->created_ms;
	mm->expiry_s = m->expiry_s;
	session_deliver_as_is(ss, mm, &dd);
	msg_unref(mm);
}

/* ---- life ------------------------------------------------------------------ */

static struct bridge *bridge_new(struct shard *s, unsigned idx,
				 const struct kite_bridge_cfg *k)
{
	struct bridge *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->s = s;
	b->idx = idx;
	b->cfg = *k;
	b->fd = -1;
	b->notify = -1;
	if (k->cafile[0] || k->capath[0] || k->psk[0]) {
		char err[256];
		const struct tls_client_opts o = {
			.cafile = k->cafile, .capath = k->capath,
			.certfile = k->certfile, .keyfile = k->keyfile,
			.version = k->tls_version[0] ? k->tls_version : NULL,
			.alpn = k->alpn, .psk_identity = k->psk_identity,
			.psk_hex = k->psk, .require_ocsp = k->require_ocsp,
		};
		b->tls = tls_client_new(&o, err, sizeof(err));
		if (!b->tls) {
			log_msg(KITE_LOG_ERR, "Bridge %s: TLS: %s", k->name, err);
			free(b);
			return NULL;
		}
	}
	/* The local side: a session that lives as long as the broker, so
	 * what the remote has not acknowledged waits for it; with
	 * persistence and a persistent local session (local_cleansession
	 * false, Mosquitto's default), across restarts too: recovery left
	 * the logged one on this shard. */
	unsigned cfg_idx = (unsigned)(k - s->cfg->bridges);
	uint64_t key = s->b->bridge_recovered ? s->b->bridge_recovered[cfg_idx]
					      : 0;
	b->ss = key ? shard_session_by_id(s, key) : NULL;
	if (b->ss) {
		assert(b->ss->of_bridge && !b->ss->bridge);
		/* Its topics are the config's now. */
		while (b->ss->subs)
			session_remove_sub(b->ss, b->ss->subs->filter,
					   b->ss->subs->len, NULL);
	} else {
		b->ss = session_create(s, (const uint8_t *)k->local_clientid,
				       (uint16_t)strlen(k->local_clientid),
				       UINT32_MAX);
	}
	if (!b->ss) {
		tls_client_free(b->tls);
		free(b);
		return NULL;
	}
	b->ss->bridge = b;
	b->ss->of_bridge = true;
	b->ss->protocol = k->protocol;
	b->local_clean = k->local_cleansession < 0 ? k->cleansession
						   : k->local_cleansession;
	if (!b->local_clean)
		persist_session(b->ss);
	for (unsigned i = 0; i < k->topic_count; i++) {
		const struct kite_bridge_topic *t = &k->topics[i];
		if (!(t->dir & BRIDGE_OUT))
			continue;
		/* No local: what came in from the remote does not go back. */
		uint16_t len = (uint16_t)strlen(t->local_topic);
		if (session_add_sub(b->ss, t->local_topic, len,
				    t->qos | SUB_NO_LOCAL | SUB_RETAIN_AS_PUBLISHED,
				    0, NULL) < 0)
			log_msg(KITE_LOG_ERR, "Bridge %s: cannot subscribe to %s",
				k->name, t->local_topic);
		else
			route_retained(s, b->ss, t->local_topic, len, t->qos, 0);
	}
	return b;
}

void bridge_start(struct shard *s)
{
	const struct kite_config *cfg = s->cfg;
	unsigned n = s->b->nshards;
	unsigned mine = 0;
	for (unsigned i = s->idx; i < cfg->bridge_count; i += n)
		mine++;
	if (!mine)
		return;
	s->bridges = calloc(mine, sizeof(*s->bridges));
	if (!s->bridges) {
		log_msg(KITE_LOG_ERR, "shard %u: no memory for bridges", s->idx);
		return;
	}
	for (unsigned i = s->idx; i < cfg->bridge_count; i += n) {
		struct bridge *b = bridge_new(s, s->bridge_count, &cfg->bridges[i]);
		if (!b) {
			log_msg(KITE_LOG_ERR, "Bridge %s not started",
				cfg->bridges[i].name);
			continue;
		}
		s->bridges[s->bridge_count++] = b;
		bridge_notify_local(b, 0);
		if (b->cfg.start_type == 1)
			bridge_schedule(b, 0);
		else
			bridge_try(b);
	}
	conn_settle(s);
}

void bridge_tick(struct shard *s)
{
	for (unsigned i = 0; i < s->bridge_count; i++) {
		struct bridge *b = s->bridges[i];
		if (b->notify >= 0) {
			bridge_notify_local(b, b->notify);
			b->notify = -1;
		}
		if (s->stopping)
			continue;
		if ((b->state == BRIDGE_IDLE && s->now_ms >= b->next_try_ms) ||
		    (b->state == BRIDGE_LAZY && bridge_lazy_due(b))) {
			bridge_try(b);
		} else if (b->state == BRIDGE_UP && b->conn &&
			   b->cfg.start_type == 1 &&
			   s->now_ms - b->last_msg_ms >=
				   (uint64_t)b->cfg.idle_timeout_s * 1000u) {
			log_msg(KITE_LOG_NOTICE, "Bridge connection %s has "
				"exceeded idle timeout, disconnecting.",
				b->cfg.name);
			conn_close(b->conn, "idle timeout (start_type lazy)",
				   false);
		} else if (b->state == BRIDGE_UP && b->conn &&
			   s->now_ms - b->last_ping_ms >=
				   (uint64_t)b->cfg.keepalive_s * 1000u) {
			static const uint8_t ping[2] = {MQTT_PINGREQ << 4, 0};
			b->last_ping_ms = s->now_ms;
			conn_queue_ctrl(b->conn, ping, sizeof(ping));
		}
	}
}

void bridge_free_all(struct shard *s)
{
	for (unsigned i = 0; i < s->bridge_count; i++) {
		struct bridge *b = s->bridges[i];
		if (b->fd >= 0)
			close(b->fd);
		if (b->ss)
			b->ss->bridge = NULL;
		tls_client_free(b->tls);
		free(b);
	}
	free(s->bridges);
	s->bridges = NULL;
	s->bridge_count = 0;
}
