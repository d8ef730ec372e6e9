/* CONNECT (spec 3.1): validation, the client-id registry and takeover.
 *
 * The registry maps a client id to the shard that owns its session. A
 * clean session always starts on the accepting shard; if an older session
 * lives on another shard, the registry entry is switched under the lock
 * and that shard is sent exactly one kick, which closes the old connection
 * and frees the old session there. A persistent session is resumed where
 * it lives: the new connection moves to that shard (its recv is cancelled
 * here, it is re-armed there), so session state never crosses threads. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include <unistd.h>

#include "core/log.h"
#include "io/cluster.h"
#include "io/conn.h"
#include "io/handle.h"
#include "io/ktls.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/security.h"
#include "io/session.h"
#include "io/shard.h"

struct pending_connect {
	bool clean;
	bool assigned_id;
	bool keepalive_capped; /* MQTT 5: CONNACK says server keep alive */
	uint32_t expiry_s;
	unsigned target;
	uint16_t id_len;
	char id[];
};

/* ---- completing a CONNECT ----------------------------------------------- */

/* What an MQTT 5 client learns about this broker's limits. */
static void connect_limits(const struct conn *c, struct mqtt_props *props)
{
	const struct kite_config *cfg = c->shard->cfg;
	if (cfg->max_topic_alias) {
		props->present |= MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM);
		props->topic_alias_maximum = (uint16_t)cfg->max_topic_alias;
	}
	if (cfg->max_inflight_messages && cfg->max_inflight_messages < 65535) {
		props->present |= MQTT_PROP_BIT(MQTT_PROP_RECEIVE_MAXIMUM);
		props->receive_maximum = (uint16_t)cfg->max_inflight_messages;
	}
	if (cfg->max_qos < 2) {
		props->present |= MQTT_PROP_BIT(MQTT_PROP_MAXIMUM_QOS);
		props->maximum_qos = cfg->max_qos;
	}
	if (!cfg->retain_available) {
		props->present |= MQTT_PROP_BIT(MQTT_PROP_RETAIN_AVAILABLE);
		props->retain_available = 0;
	}
	if (cfg->max_packet_size) {
		props->present |= MQTT_PROP_BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE);
		props->maximum_packet_size = cfg->max_packet_size;
	}
	if (c->pending && c->pending->keepalive_capped) {
		props->present |= MQTT_PROP_BIT(MQTT_PROP_SERVER_KEEP_ALIVE);
		props->server_keep_alive = c->keepalive_s;
	}
}

static void connect_send_connack(struct conn *c, bool present, uint8_t rc)
{
	uint8_t buf[96];
	struct mqtt_props props = {0};
	if (c->version == MQTT_V5 && c->pending && c->pending->assigned_id) {
		props.present |= MQTT_PROP_BIT(MQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER);
		props.assigned_client_identifier = (struct mqtt_bytes){
			(const uint8_t *)c->pending->id, c->pending->id_len};
	}
	if (c->version == MQTT_V5 && rc == 0)
		connect_limits(c, &props);
	uint8_t *dyn = NULL;
	uint8_t *out = buf;
	size_t cap = sizeof(buf);
	if (c->pending && c->pending->id_len > 32) {
		cap = (size_t)c->pending->id_len + 96;
		dyn = out = malloc(cap);
		if (!dyn) {
			conn_close(c, "out of memory", false);
			return;
		}
	}
	/* MQTT 3.1 has no session-present flag: the byte is reserved. */
	present = present && c->version != MQTT_V31;
	size_t n = mqtt_encode_connack(out, cap, c->version, present, rc,
				       c->version == MQTT_V5 ? &props : NULL);
	assert(n);
	if (c->version == MQTT_V5 && c->v5 && c->v5->max_packet &&
	    n > c->v5->max_packet) {
		/* Spec 3.1.2.11.4: never send a packet over the client's limit;
		 * with no CONNACK that fits, the connection ends. */
		free(dyn);
		conn_close(c, "CONNACK larger than the client's Maximum Packet Size", false);
		return;
	}
	conn_queue_ctrl(c, out, n);
	/* Alone in a queue made for it: given back once it is sent. */
	c->outq_once = c->out_count == 1;
	free(dyn);
}

static void connect_accept_now(struct shard *s, struct conn *c,
			       struct session *ss, bool present)
{
	c->session = ss;
	ss->conn = c;
	ss->zombie = false;
	ss->expire_at_ms = 0;
	/* Queued messages are checked against this connection's identity
	 * as they go out (the username may have changed). */
	session_set_identity(ss, c->listener, c->username);
	session_cancel_will(ss); /* back in time */
	/* New here: it may have lived on another node of the cluster
	 * (whose messages, if any, it has now: connect_accept). */
	if (!present && !ss->subs && ss->persistent && s->b->cluster)
		present = cluster_session_restore(s, ss) ||
			  ss->inflight_count || ss->q_count;
	c->state = CONN_ACTIVE;
	c->flags |= CONN_COUNTED;
	stat_add(&s->stats.clients_connected, 1);
	connect_send_connack(c, present, 0);
	conn_allow(c);
	if (s->cfg->connection_messages) {
		char peer[64];
		static const int proto[] = {[3] = 1, [4] = 2, [5] = 5};
		log_msg(KITE_LOG_NOTICE,
			"New client connected from %s as %s (p%d, c%d, k%u%s%s%s).",
			conn_peer_str(c, peer, sizeof(peer)), ss->client_id,
			proto[c->version], c->pending->clean ? 1 : 0,
			c->keepalive_s, c->username ? ", u'" : "",
			c->username ? c->username : "", c->username ? "'" : "");
	}
	free(c->pending);
	c->pending = NULL;
	if (s->b->cluster) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ss->connect_wall_us = (uint64_t)ts.tv_sec * 1000000u +
				      (uint64_t)ts.tv_nsec / 1000u;
		cluster_announce_session(s, ss);
		cluster_session_save(s, ss, !ss->persistent);
	}
	persist_session(ss); /* before its subscriptions and messages */
	if (present && ss->conn == c) /* not closed: CONNACK out of memory */
		session_resume(ss);
}

static void connect_accept(struct shard *s, struct conn *c,
			   struct session *ss, bool present)
{
	/* New here, it may have lived on another node of the cluster: that
	 * node hands its queued and in-flight messages over first. The
	 * CONNACK waits for them (bounded, the connection parked; the shard
	 * goes on), and connect_resume runs when they came. */
	if (!present && !ss->subs && ss->persistent && s->b->cluster &&
	    cluster_session_fetch(s, c, ss)) {
		shard_park_input(s, c, PARK_CLUSTER);
		return;
	}
	connect_accept_now(s, c, ss, present);
}

void connect_resume(struct shard *s, struct conn *c, struct session *ss)
{
	assert(c->state == CONN_AWAIT_CONNECT && c->pending && !ss->conn);
	connect_accept_now(s, c, ss, false);
}

static void connect_start_handoff(struct shard *s, struct conn *c,
				  unsigned target)
{
	c->pending->target = target;
	c->state = CONN_HANDOFF;
	if (c->flags & CONN_RECV_ARMED) {
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_cancel64(sqe, ud_pack(UD_RECV, c->id, c->gen), 0);
		io_uring_sqe_set_data64(sqe, ud_pack(UD_CANCEL, c->id, c->gen));
	}
	/* The recv's final completion calls connect_handoff_ready(). */
}

void connect_handoff_ready(struct shard *s, struct conn *c)
{
	assert(c->state == CONN_HANDOFF && !(c->flags & CONN_RECV_ARMED));
	if (c->flags & (CONN_SEND_BUSY | CONN_DIRTY))
		return; /* nothing is queued before CONNACK; be safe */
	shard_conn_detach(s, c);
	shard_post(s, c->pending->target, (struct xitem){XK_ADOPT, c});
}

/* Decides where the client's session is; runs on the shard holding c. */
static void connect_complete(struct shard *s, struct conn *c)
{
	struct broker *b = s->b;
	struct pending_connect *p = c->pending;
	struct session *old = NULL, *ss = NULL;
	unsigned old_shard = 0;
	uint64_t h = hash_bytes(p->id, p->id_len);
	pthread_mutex_lock(&b->reg_lock);
	struct client_entry *e = session_reg_find(b, h, p->id, p->id_len);
	if (e && !p->clean && e->persistent) {
		if (e->shard != s->idx) {
			unsigned target = e->shard;
			pthread_mutex_unlock(&b->reg_lock);
			connect_start_handoff(s, c, target);
			return;
		}
		ss = e->session;
		e->persistent = p->expiry_s != 0;
		pthread_mutex_unlock(&b->reg_lock);
		session_detach_conn(ss, "session taken over", false);
		ss->expiry_s = p->expiry_s;
		ss->persistent = p->expiry_s != 0;
		connect_accept(s, c, ss, true);
		return;
	}
	ss = session_create(s, (const uint8_t *)p->id, p->id_len, p->expiry_s);
	if (!e)
		e = session_reg_insert(b, h, p->id, p->id_len);
	else {
		old = e->session;
		old_shard = e->shard;
	}
	if (!ss || !e) {
		pthread_mutex_unlock(&b->reg_lock);
		if (ss)
			session_destroy(ss);
		conn_close(c, "out of memory", false);
		return;
	}
	e->session = ss;
	e->shard = s->idx;
	e->persistent = p->expiry_s != 0;
	pthread_mutex_unlock(&b->reg_lock);
	/* Here, the old connection is served up to now unless it is parked
	 * with input it has not run yet, or was just unparked (its socket
	 * may hold more): then as from another shard. */
	bool local = old && old_shard == s->idx;
	struct takeover *t = NULL;
	if (local && !(old->conn && (old->conn->parked || old->conn->recv_fresh)))
		session_kick(s, old);
	else if (old && (t = malloc(sizeof(*t)))) {
		*t = (struct takeover){.old = old, .conn_id = c->id,
					.conn_gen = c->gen,
					.from = (uint8_t)s->idx};
		if (local)
			shard_queue_takeover(s, t);
		else
			shard_post(s, old_shard, (struct xitem){XK_TAKEOVER, t});
	} else if (local)
		session_kick(s, old);
	else if (old)
		shard_post(s, old_shard, (struct xitem){XK_KICK, old});
	connect_accept(s, c, ss, false);
	/* What the client sends next waits until the old connection's shard
	 * has served what that one sent before this CONNECT, and closed it
	 * (Mosquitto's one loop reads in arrival order). */
	if (t && (c->state == CONN_ACTIVE || (c->parked & PARK_CLUSTER)))
		shard_park_input(s, c, PARK_TAKEOVER);
}

void connect_adopt(struct shard *s, struct conn *c)
{
	assert(c->state == CONN_HANDOFF);
	if (shard_conn_attach(s, c) < 0) {
		atomic_fetch_sub(&s->b->listener_conns[c->listener], 1);
		close(c->fd);
		conn_free(c);
		return;
	}
	c->state = CONN_AWAIT_CONNECT;
	shard_arm_recv(s, c);
	connect_complete(s, c);
	if (c->state == CONN_ACTIVE && c->in_len) {
		/* Packets the client sent behind its CONNECT. */
		uint32_t len;
		uint8_t *data = conn_take_input(c, &len);
		conn_on_plain(c, data, len); /* decrypted on the accepting shard */
		free(data);
	}
	ktls_begin(c); /* before the CONNACK leaves, as on any shard */
}

/* ---- the packet ------------------------------------------------------------- */

static void connect_refuse(struct conn *c, uint8_t v3_rc, uint8_t v5_rc,
			   const char *why)
{
	uint8_t buf[16];
	bool v5 = c->version == MQTT_V5;
	size_t n = mqtt_encode_connack(buf, sizeof(buf), v5 ? MQTT_V5 : MQTT_V311,
				       false, v5 ? v5_rc : v3_rc, NULL);
	c->flags |= CONN_CLOSE_AFTER_FLUSH;
	if (n)
		conn_queue_ctrl(c, buf, n);
	conn_strike(c);
	conn_close(c, why, false);
}

/* The session's client id: `id` (len bytes) as the client or the
 * listener's use_username_as_clientid chose it, or when len is 0 one
 * generated from the listener's auto_id_prefix. */
static struct pending_connect *connect_pending(const struct mqtt_connect *ci,
					       const char *id, size_t len,
					       const char *prefix)
{
	bool assign = len == 0;
	size_t plen = strlen(prefix);
	if (assign)
		len = plen + 36; /* the prefix and a UUID */
	if (len > CLIENT_ID_MAX)
		return NULL;
	struct pending_connect *p = malloc(sizeof(*p) + len + 1u);
	if (!p)
		return NULL;
	p->clean = ci->clean_start;
	p->assigned_id = assign;
	p->keepalive_capped = false;
	if (ci->version != MQTT_V5)
		p->expiry_s = ci->clean_start ? 0 : UINT32_MAX;
	else if (ci->props.present &
		 MQTT_PROP_BIT(MQTT_PROP_SESSION_EXPIRY_INTERVAL))
		p->expiry_s = ci->props.session_expiry_interval;
	else
		p->expiry_s = 0;
	p->target = 0;
	if (assign) {
		/* Mosquitto's form: the prefix and a random UUID-like string. */
		uint8_t r[16] = {0};
		if (getrandom(r, sizeof(r), 0) != sizeof(r))
			for (unsigned i = 0; i < sizeof(r); i++)
				r[i] = (uint8_t)rand();
		memcpy(p->id, prefix, plen);
		char *o = p->id + plen;
		for (unsigned i = 0; i < sizeof(r); i++)
			o += sprintf(o, "%s%02x",
				     i == 4 || i == 6 || i == 8 || i == 10 ? "-" : "",
				     r[i]);
	} else {
		memcpy(p->id, id, len);
		p->id[len] = 0;
	}
	p->id_len = (uint16_t)len;
	return p;
}

/* Mosquitto's refusals of a client id: an empty one where the listener
 * (allow_zero_length_clientid) or 3.1.1 without clean session does not
 * allow it, and one outside clientid_prefixes. */
static bool connect_id_refused(struct conn *c, const struct mqtt_connect *ci)
{
	const struct kite_config *cfg = c->shard->cfg;
	const struct kite_listener_cfg *l = &cfg->listeners[c->listener];
	if (ci->client_id.len == 0 &&
	    (ci->version == MQTT_V31 ||
	     (ci->version == MQTT_V311 && !ci->clean_start) ||
	     !l->sec.allow_zero_length_clientid)) {
		connect_refuse(c, MQTT_V3_CONNACK_ID_REJECTED, MQTT_RC_UNSPECIFIED,
			       "empty client id not allowed");
		return true;
	}
	size_t plen = strlen(cfg->clientid_prefixes);
	if (plen && (ci->client_id.len < plen ||
		     memcmp(ci->client_id.ptr, cfg->clientid_prefixes, plen))) {
		connect_refuse(c, MQTT_V3_CONNACK_NOT_AUTHORIZED,
			       MQTT_RC_NOT_AUTHORIZED,
			       "client id outside clientid_prefixes");
		return true;
	}
	return false;
}

/* The id this connection's session gets (see connect_pending), or -1
 * after refusing it: use_username_as_clientid without a username. */
static int connect_make_pending(struct conn *c, const struct mqtt_connect *ci)
{
	const struct kite_listener_cfg *l =
		&c->shard->cfg->listeners[c->listener];
	const char *id = (const char *)ci->client_id.ptr;
	size_t len = ci->client_id.len;
	if (l->use_username_as_clientid) {
		if (!c->username) {
			connect_refuse(c, MQTT_V3_CONNACK_NOT_AUTHORIZED,
				       MQTT_RC_NOT_AUTHORIZED,
				       "use_username_as_clientid without a username");
			return -1;
		}
		id = c->username;
		len = strlen(id);
		if (len == 0) {
			connect_refuse(c, MQTT_V3_CONNACK_ID_REJECTED,
				       MQTT_RC_CLIENT_ID_NOT_VALID,
				       "empty username as client id");
			return -1;
		}
	}
	c->pending = connect_pending(ci, id, len, l->sec.auto_id_prefix);
	if (!c->pending) {
		conn_close(c, "out of memory", false);
		return -1;
	}
	return 0;
}

static int connect_take_will(struct conn *c, const struct mqtt_connect *ci)
{
	if (!ci->has_will)
		return 0;
	struct will *w = malloc(sizeof(*w));
	if (!w)
		return -1;
	const struct mqtt_props *wp = &ci->will.props;
	w->qos = ci->will.qos;
	w->retain = ci->will.retain;
	w->delay_s = (wp->present & MQTT_PROP_BIT(MQTT_PROP_WILL_DELAY_INTERVAL))
			     ? wp->will_delay_interval
			     : 0;
	uint32_t plen = 0;
	uint8_t *props = ci->version == MQTT_V5 ? msg_passthrough_props(wp, &plen)
						: NULL;
	struct mqtt_bytes topic = ci->will.topic;
	char *mounted = NULL;
	w->msg = conn_mount(c, &topic, &mounted) < 0
			 ? NULL
			 : msg_new(topic.ptr, (uint16_t)topic.len,
				   ci->will.payload.ptr, ci->will.payload.len,
				   w->qos, w->retain, props, plen);
	free(mounted);
	free(props);
	if (!w->msg) {
		free(w);
		return -1;
	}
	if (wp->present & MQTT_PROP_BIT(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL))
		w->msg->expiry_s = wp->message_expiry_interval;
	c->will = w;
	return 0;
}

static int connect_v5_state(struct conn *c, const struct mqtt_connect *ci)
{
	struct conn_v5 *v5 = calloc(1, sizeof(*v5));
	if (!v5)
		return -1;
	const struct mqtt_props *p = &ci->props;
	v5->receive_max = (p->present & MQTT_PROP_BIT(MQTT_PROP_RECEIVE_MAXIMUM))
				  ? p->receive_maximum
				  : 65535;
	if (p->present & MQTT_PROP_BIT(MQTT_PROP_MAXIMUM_PACKET_SIZE))
		v5->max_packet = p->maximum_packet_size;
	v5->alias_cap = (uint16_t)c->shard->cfg->max_topic_alias;
	if (p->present & MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS_MAXIMUM))
		v5->out_alias_max = p->topic_alias_maximum < CONN_OUT_ALIASES_MAX
					    ? p->topic_alias_maximum
					    : CONN_OUT_ALIASES_MAX;
	c->v5 = v5;
	return 0;
}

static bool connect_identity_mode(const struct conn *c)
{
	const struct kite_tls_cfg *t = &c->shard->cfg->listeners[c->listener].tls;
	return c->tls && (t->use_identity_as_username || t->use_subject_as_username);
}

/* The password file (when the listener has one) decides a username. */
static bool connect_password_ok(struct conn *c, const struct mqtt_connect *ci)
{
	if (!ci->has_username || connect_identity_mode(c))
		return true;
	return security_check_password(c, c->username,
				       ci->has_password ? ci->password.ptr : NULL,
				       ci->has_password ? ci->password.len : 0) ==
	       PASSWD_OK;
}

/* Whether this identity may publish its will. Like Mosquitto 2.0, a will
 * it may not write does not refuse the CONNECT: it is dropped (and, unlike
 * Mosquitto, the log says so). */
static bool connect_will_ok(struct conn *c, const struct mqtt_connect *ci)
{
	const struct security *sec = c->shard->sec;
	if (ci->has_will && security_publish_reserved((const char *)ci->will.topic.ptr,
						      ci->will.topic.len))
		return false;
	if (!ci->has_will || c->listener >= sec->count || !sec->acl[c->listener])
		return true;
	struct acl_identity *id = acl_cache_get(sec->acl[c->listener],
						c->username, c->pending->id);
	/* The will's topic as it will be published (mount_point). */
	bool ok = id && acl_check(id, msg_topic(c->will->msg),
				  c->will->msg->topic_len, ACL_WRITE);
	if (id)
		acl_identity_unref(id);
	return ok;
}

/* With allow_anonymous false a client must be vouched for: by its
 * certificate (use_identity_as_username, use_subject_as_username) or by
 * the password file. A username alone is no credential: without a
 * password file Mosquitto 2.0 refuses it too. */
static bool connect_allowed(const struct conn *c, const struct mqtt_connect *ci)
{
	const struct kite_listener_cfg *l =
		&c->shard->cfg->listeners[c->listener];
	if (l->allow_anonymous == 1 || connect_identity_mode(c))
		return true;
	return ci->has_username && security_has_passwords(c);
}


/* use_identity_as_username / use_subject_as_username: the certificate
 * names the client, whatever CONNECT says (Mosquitto's rule), and the
 * password file is not consulted. Returns -1 when there is no usable
 * identity. */
static int connect_take_identity(struct conn *c)
{
	const char *id = tls_conn_identity(c->tls);
	if (!id)
		return -1;
	free(c->username);
	c->username = strdup(id);
	return c->username ? 0 : -1;
}

/* "MQTT" or "MQIsdp": a known protocol at an unsupported level gets CONNACK
 * 0x01; anything else is not MQTT and is closed without a word, as
 * Mosquitto does. */
static bool connect_known_name(const uint8_t *body, size_t len)
{
	if (len < 2)
		return false;
	size_t n = (size_t)body[0] << 8 | body[1];
	if (len < 2 + n)
		return false;
	return (n == 4 && !memcmp(body + 2, "MQTT", 4)) ||
	       (n == 6 && !memcmp(body + 2, "MQIsdp", 6));
}

int handle_connect(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len)
{
	if (c->state != CONN_AWAIT_CONNECT) {
		/* A Protocol Error; the spec lets the server close without a
		 * DISCONNECT, and Mosquitto (whose suite checks it) does. */
		conn_strike(c);
		conn_close(c, "second CONNECT (protocol error)", false);
		return -1;
	}
	struct mqtt_connect ci;
	enum mqtt_rc rc = mqtt_decode_connect(body, len, &ci);
	c->version = ci.version == MQTT_V5 ? MQTT_V5 : MQTT_V311;
	c->peer_bridge = rc == MQTT_RC_SUCCESS && ci.bridge;
	if (rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION && !connect_known_name(body, len)) {
		conn_strike(c);
		conn_close(c, "unknown protocol name in CONNECT", false);
		return -1;
	}
	if (rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION) {
		c->version = MQTT_V311;
		connect_refuse(c, MQTT_V3_CONNACK_BAD_PROTOCOL, rc,
			       "unsupported protocol version");
		return -1;
	}
	if (rc == MQTT_RC_CLIENT_ID_NOT_VALID) {
		connect_refuse(c, MQTT_V3_CONNACK_ID_REJECTED, rc,
			       "invalid client id");
		return -1;
	}
	if (rc != MQTT_RC_SUCCESS) {
		conn_strike(c);
		conn_close(c, "malformed CONNECT", false);
		return -1;
	}
	c->version = ci.version;
	if (connect_id_refused(c, &ci))
		return -1;
	uint32_t size_limit = c->shard->cfg->message_size_limit;
	if (ci.has_will && size_limit && ci.will.payload.len > size_limit) {
		/* A will that could never be published is refused with the
		 * CONNECT, as Mosquitto does (3.1.1: not authorised). */
		connect_refuse(c, MQTT_V3_CONNACK_NOT_AUTHORIZED,
			       MQTT_RC_PACKET_TOO_LARGE,
			       "will payload over message_size_limit");
		return -1;
	}
	if (ci.props.present & MQTT_PROP_BIT(MQTT_PROP_AUTHENTICATION_METHOD)) {
		/* No enhanced authentication method is supported (Mosquitto
		 * without a plugin answers the same). */
		connect_refuse(c, MQTT_V3_CONNACK_NOT_AUTHORIZED,
			       MQTT_RC_BAD_AUTH_METHOD,
			       "unsupported authentication method");
		return -1;
	}
	/* Mosquitto 2.0.11 applies max_keepalive to MQTT 5 clients only (as
	 * server keep alive); 3.1/3.1.1 clients keep the value they asked. */
	uint32_t max_ka = c->version == MQTT_V5 ? c->shard->cfg->max_keepalive_s
						 : 65535u;
	if (c->version == MQTT_V5 && connect_v5_state(c, &ci) < 0) {
		conn_close(c, "out of memory", false);
		return -1;
	}
	if (connect_identity_mode(c) && connect_take_identity(c) < 0) {
		connect_refuse(c, MQTT_V3_CONNACK_BAD_CREDENTIALS,
			       MQTT_RC_BAD_USERNAME_OR_PASSWORD,
			       "no usable certificate identity");
		return -1;
	}
	if (!connect_allowed(c, &ci)) {
		connect_refuse(c, MQTT_V3_CONNACK_NOT_AUTHORIZED,
			       MQTT_RC_NOT_AUTHORIZED, "not authorised");
		return -1;
	}
	c->keepalive_s = ci.keepalive_s > max_ka ? (uint16_t)max_ka : ci.keepalive_s;
	if (ci.has_username && !connect_identity_mode(c) &&
	    !(c->username = strndup((const char *)ci.username.ptr,
				    ci.username.len))) {
		conn_close(c, "out of memory", false);
		return -1;
	}
	if (!connect_password_ok(c, &ci)) {
		/* Mosquitto 2.0 answers 0x87 (not authorized), not 0x86. */
		connect_refuse(c, MQTT_V3_CONNACK_NOT_AUTHORIZED,
			       MQTT_RC_NOT_AUTHORIZED,
			       "bad username or password");
		return -1;
	}
	if (connect_make_pending(c, &ci) < 0)
		return -1;
	if (connect_take_will(c, &ci) < 0) {
		conn_close(c, "out of memory", false);
		return -1;
	}
	if (!connect_will_ok(c, &ci)) {
		log_msg(KITE_LOG_NOTICE, "Client %s: will on '%.*s' not allowed "
			"by the ACL; it will not be published.", c->pending->id,
			(int)ci.will.topic.len, ci.will.topic.ptr);
		msg_unref(c->will->msg);
		free(c->will);
		c->will = NULL;
	}
	/* Mosquitto counts "no keepalive" as above a configured maximum. */
	c->pending->keepalive_capped =
		c->version == MQTT_V5 &&
		(ci.keepalive_s > max_ka || (ci.keepalive_s == 0 && max_ka < 65535));
	if (c->pending->keepalive_capped)
		c->keepalive_s = (uint16_t)max_ka;
	connect_complete(c->shard, c);
	return 0;
}
