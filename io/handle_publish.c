/* PUBLISH from a client (spec 3.3; MQTT 5 3.3.2.3 for the properties). */
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "io/bridge.h"
#include "io/cluster.h"
#include "io/conn.h"
#include "io/handle.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/session.h"
#include "io/shard.h"

static void publish_ack(struct conn *c, uint8_t type, uint16_t pid,
			uint8_t reason)
{
	uint8_t buf[8];
	size_t n = mqtt_encode_ack(buf, sizeof(buf), type, c->version, pid,
				   reason, NULL);
	if (n)
		conn_queue_ack(c, buf, n);
}

/* Client-to-server topic alias: resolves an empty topic, or records the
 * topic under its alias. Returns a reason code. */
static enum mqtt_rc publish_alias(struct conn *c, struct mqtt_publish *p)
{
	if (!(p->props.present & MQTT_PROP_BIT(MQTT_PROP_TOPIC_ALIAS)))
		return MQTT_RC_SUCCESS;
	struct conn_v5 *v5 = c->v5;
	uint16_t a = p->props.topic_alias;
	if (a == 0 || a > v5->alias_cap)
		return MQTT_RC_TOPIC_ALIAS_INVALID;
	if (!v5->aliases &&
	    !(v5->aliases = calloc(v5->alias_cap, sizeof(*v5->aliases))))
		return MQTT_RC_UNSPECIFIED;
	struct alias *al = &v5->aliases[a - 1];
	if (p->topic.len == 0) {
		if (!al->topic)
			return MQTT_RC_PROTOCOL_ERROR;
		p->topic = (struct mqtt_bytes){(const uint8_t *)al->topic, al->len};
		return MQTT_RC_SUCCESS;
	}
	char *t = malloc(p->topic.len);
	if (!t)
		return MQTT_RC_UNSPECIFIED;
	memcpy(t, p->topic.ptr, p->topic.len);
	free(al->topic);
	al->topic = t;
	al->len = (uint16_t)p->topic.len;
	return MQTT_RC_SUCCESS;
}

/* An acknowledgement that waits for what this shard logged so far. */
static void publish_ack_durable(struct conn *c, uint8_t type, uint16_t pid,
				uint8_t reason)
{
	uint8_t buf[8];
	size_t n = mqtt_encode_ack(buf, sizeof(buf), type, c->version, pid,
				   reason, NULL);
	if (n)
		persist_ack(c, buf, n);
}

/* Routes m (taking its reference); `ack` (PUBACK, PUBCOMP, or 0 for
 * none) leaves once every shard that logged it for a persistent session
 * (or the retained store) has it on disk. */
void publish_route(struct conn *c, struct msg *m, uint8_t ack, uint16_t pid)
{
	struct shard *s = c->shard;
	struct persist_ticket *t =
		(ack || m->retain) ? persist_ticket_begin(s, m) : NULL;
	/* In a cluster with JetStream the ack also waits for the stream. */
	if (!t && ack && s->b->cluster && cluster_holds_ack(s->b, m))
		t = persist_ticket_new(s, m);
	if (ack == MQTT_PUBCOMP && c->session && c->session->logged) {
		if (t) {
			/* Exactly once across a restart: the release is
			 * logged only once every destination has the
			 * message, and QoS 2 deliveries wait for it. */
			t->q2_release = true;
			t->q2_key = c->session->id;
			t->q2_pid = pid;
			atomic_store(&m->q2_held, true);
		} else {
			persist_qos2_rel(c->session, pid);
		}
	}
	bool matched = route_publish_t(s, m, t);
	uint8_t buf[8];
	size_t n = ack ? mqtt_encode_ack(buf, sizeof(buf), ack, c->version, pid,
					 matched || ack == MQTT_PUBCOMP
						 ? 0 : MQTT_RC_NO_MATCHING_SUBSCRIBERS,
					 NULL)
		       : 0;
	persist_ticket_ack(s, t, c, buf, n);
}

static struct msg *publish_msg(struct conn *c, const struct mqtt_publish *p)
{
	uint32_t plen = 0;
	uint8_t *props = c->version == MQTT_V5
				 ? msg_passthrough_props(&p->props, &plen)
				 : NULL;
	struct msg *m = msg_new(p->topic.ptr, (uint16_t)p->topic.len,
				p->payload.ptr, p->payload.len, p->qos,
				p->retain, props, plen);
	free(props);
	if (!m)
		return NULL;
	m->origin = c->session->id;
	m->created_ms = c->shard->now_ms;
	if (p->retain && p->payload.len && c->shard->cfg->check_retain_source) {
		/* Who may still write it is checked when it is sent. */
		const struct session *ss = c->session;
		m->source = msg_source_new((uint8_t)c->listener, ss->client_id,
					   ss->client_id_len, c->username,
					   c->username ? strlen(c->username) : 0);
		if (!m->source) {
			msg_unref(m);
			return NULL;
		}
	}
	if (p->props.present & MQTT_PROP_BIT(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL))
		m->expiry_s = p->props.message_expiry_interval;
	return m;
}

static enum mqtt_rc publish_check(struct conn *c, struct mqtt_publish *p)
{
	const struct kite_config *cfg = c->shard->cfg;
	if (c->version == MQTT_V5) {
		enum mqtt_rc rc = publish_alias(c, p);
		if (rc != MQTT_RC_SUCCESS)
			return rc;
		uint32_t rmax = cfg->max_inflight_messages
					? cfg->max_inflight_messages
					: 65535;
		if (p->qos == 2 && c->session->qos2_in_count >= rmax &&
		    !session_qos2_seen(c->session, p->packet_id))
			return MQTT_RC_RECEIVE_MAXIMUM_EXCEEDED;
	}
	if (p->retain && !cfg->retain_available)
		return MQTT_RC_RETAIN_NOT_SUPPORTED;
	if (p->qos > cfg->max_qos)
		return MQTT_RC_QOS_NOT_SUPPORTED;
	return MQTT_RC_SUCCESS;
}

static int publish_accept(struct conn *c, struct mqtt_publish *pp);

int handle_publish(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len)
{
	struct mqtt_publish p;
	enum mqtt_rc rc = mqtt_decode_publish(h->flags, body, len, c->version, &p);
	if (rc == MQTT_RC_SUCCESS)
		rc = publish_check(c, &p);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid PUBLISH");
		return -1;
	}
	stat_add(&c->shard->stats.publish_received, 1);
	/* mount_point: the client's topics live below it, ACL included. */
	char *mounted;
	if (conn_mount(c, &p.topic, &mounted) < 0) {
		conn_close(c, "out of memory or topic too long under mount_point",
			   false);
		return -1;
	}
	int ret = publish_accept(c, &p);
	free(mounted);
	return ret;
}

/* A valid PUBLISH, its topic mounted: checked against the limits and the
 * ACL, then routed (QoS 0/1) or held until PUBREL (QoS 2). */
static int publish_accept(struct conn *c, struct mqtt_publish *pp)
{
	struct shard *s = c->shard;
	struct mqtt_publish p = *pp;
	uint8_t ack = p.qos == 1 ? MQTT_PUBACK : MQTT_PUBREC;
	uint64_t mem = s->cfg->memory_limit;
	uint64_t heap = mem ? atomic_load_explicit(&s->b->heap_bytes,
						   memory_order_relaxed) : 0;
	if (mem && heap + p.payload.len > mem) {
		/* Mosquitto's memory_limit: the message is dropped and its
		 * publisher disconnected. */
		log_msg(KITE_LOG_WARNING, "memory_limit reached (%llu bytes "
			"in use): dropped a PUBLISH of %u bytes from %s and "
			"disconnected it", (unsigned long long)heap,
			(unsigned)p.payload.len, conn_client_id(c));
		conn_close(c, "memory_limit reached", false);
		return -1;
	}
	uint32_t limit = s->cfg->message_size_limit;
	if (limit && p.payload.len > limit) {
		/* Mosquitto drops it and still acknowledges. */
		log_msg(KITE_LOG_DEBUG, "Dropped too large PUBLISH from %s",
			conn_client_id(c));
		if (p.qos)
			publish_ack(c, ack, p.packet_id, MQTT_RC_PACKET_TOO_LARGE);
		return 0;
	}
	struct session *ss = c->session;
	if (!session_may(ss, (const char *)p.topic.ptr, p.topic.len, ACL_WRITE)) {
		/* Mosquitto: QoS 0 dropped silently; QoS 1/2 acknowledged
		 * (3.1.1) or refused with 0x87 (5.0); nothing is routed. */
		if (log_enabled(KITE_LOG_DEBUG))
			log_msg(KITE_LOG_DEBUG, "Denied PUBLISH from %s to '%.*s'",
				ss->client_id, (int)p.topic.len, p.topic.ptr);
		if (p.qos)
			publish_ack(c, ack, p.packet_id, MQTT_RC_NOT_AUTHORIZED);
		return 0;
	}
	if (p.qos == 2 && session_qos2_seen(ss, p.packet_id)) {
		publish_ack_durable(c, MQTT_PUBREC, p.packet_id, 0); /* a resend */
		return 0;
	}
	/* A bridge's remote topic becomes the local one. */
	char *mapped = c->bridge ? bridge_map_in(c, &p.topic) : NULL;
	struct msg *m = publish_msg(c, &p);
	free(mapped);
	if (!m || (p.qos == 2 && session_qos2_add(ss, p.packet_id, m) < 0)) {
		msg_unref(m);
		conn_close(c, "out of memory", false);
		return -1;
	}
	if (p.qos == 2) {
		/* Routed at PUBREL; PUBREC once the message is durable.
		 * Mosquitto 2.0 sends 0x10 in PUBACK only: a plain PUBREC. */
		publish_ack_durable(c, ack, p.packet_id, 0);
	} else {
		publish_route(c, m, p.qos ? ack : 0, p.packet_id);
	}
	/* Other shards are behind: this publisher waits (TCP pushes back
	 * to it) until they caught up. */
	if (shard_backlogged(s)) {
		if (!s->input_paused)
			log_msg(KITE_LOG_INFO, "shard %u: another shard is behind; "
				"publishers wait until it caught up", s->idx);
		shard_pause_input(s, c);
	}
	return 0;
}
