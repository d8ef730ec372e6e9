/* SUBSCRIBE (spec 3.8): SUBACK first, then the retained messages. */
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "io/conn.h"
#include "io/handle.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/session.h"
#include "io/share.h"

static bool sub_is_shared(const struct mqtt_bytes *f)
{
	const char *key;
	uint16_t klen;
	return share_parse((const char *)f->ptr, (uint16_t)f->len, &key, &klen);
}

static uint32_t sub_options(const struct conn *c,
			    const struct mqtt_sub_entry *e)
{
	if (c->peer_bridge) /* as Mosquitto treats a bridge */
		return (uint32_t)e->qos | SUB_NO_LOCAL | SUB_RETAIN_AS_PUBLISHED;
	return (uint32_t)e->qos | (e->no_local ? SUB_NO_LOCAL : 0) |
	       (e->retain_as_published ? SUB_RETAIN_AS_PUBLISHED : 0) |
	       (uint32_t)e->retain_handling << SUB_RH_SHIFT;
}

static uint8_t sub_one(struct conn *c, const struct mqtt_sub_entry *e,
		       uint32_t sub_id, int *added, struct held_ack *held)
{
	struct session *ss = c->session;
	struct mqtt_sub_entry g = *e;
	/* max_qos: granted at most that (the SUBACK says so). */
	if (g.qos > c->shard->cfg->max_qos)
		g.qos = c->shard->cfg->max_qos;
	e = &g;
	*added = -1;
	if (!session_may_subscribe(ss, (const char *)e->filter.ptr,
				   e->filter.len))
		return c->version == MQTT_V5 ? MQTT_RC_NOT_AUTHORIZED
					     : MQTT_RC_UNSPECIFIED;
	*added = session_add_sub(ss, (const char *)e->filter.ptr,
				 (uint16_t)e->filter.len, sub_options(c, e), sub_id,
				 held);
	if (log_enabled(KITE_LOG_SUBSCRIBE))
		log_msg(KITE_LOG_SUBSCRIBE, "%s %u %.*s", ss->client_id, e->qos,
			(int)e->filter.len, e->filter.ptr);
	return *added < 0 ? MQTT_RC_UNSPECIFIED : e->qos;
}

/* Retain handling (MQTT 5): 0 always, 1 only for a new subscription,
 * 2 never. 3.1.1 subscriptions are always 0. */
static bool sub_wants_retained(const struct mqtt_sub_entry *e, int added)
{
	/* Shared subscriptions never get retained messages (MQTT 5 4.8.2). */
	return added >= 0 && !sub_is_shared(&e->filter) &&
	       (e->retain_handling == 0 ||
		(e->retain_handling == 1 && added == 1));
}

int handle_subscribe(struct conn *c, const struct mqtt_fixed_header *h,
		     const uint8_t *body, size_t len)
{
	struct mqtt_subscribe sub;
	enum mqtt_rc rc = mqtt_decode_subscribe(body, len, c->version, &sub);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid SUBSCRIBE");
		return -1;
	}
	uint32_t sub_id = (sub.props.present &
			   MQTT_PROP_BIT(MQTT_PROP_SUBSCRIPTION_IDENTIFIER))
				  ? sub.props.subscription_identifier
				  : 0;
	uint8_t *reasons = malloc(sub.count);
	int *added = malloc(sizeof(int) * sub.count);
	uint8_t *out = malloc((size_t)sub.count + 16);
	if (!reasons || !added || !out) {
		free(reasons);
		free(added);
		free(out);
		conn_close(c, "out of memory", false);
		return -1;
	}
	uint32_t cur = 0, i = 0;
	struct mqtt_sub_entry e;
	/* A shared subscription whose group lives on another shard is in
	 * place only when that shard says so: the SUBACK waits for it (and
	 * every later ack waits behind it, to keep them in order). */
	bool any_shared = conn_holds_acks(c) || persist_pending(c);
	while (mqtt_subscribe_next(&sub, &cur, &e))
		any_shared |= sub_is_shared(&e.filter);
	struct held_ack *held = any_shared ? conn_hold_ack(c, (size_t)sub.count + 16)
					   : NULL;
	cur = 0;
	while (mqtt_subscribe_next(&sub, &cur, &e)) {
		char *mounted;
		if (conn_mount(c, &e.filter, &mounted) < 0) {
			added[i] = -1;
			reasons[i++] = MQTT_RC_UNSPECIFIED;
			continue;
		}
		reasons[i] = sub_one(c, &e, sub_id, &added[i], held);
		free(mounted);
		i++;
	}
	size_t n = mqtt_encode_suback(out, (size_t)sub.count + 16, MQTT_SUBACK,
				      c->version, sub.packet_id, reasons, i, NULL);
	/* Retained messages go after the SUBACK: a held SUBACK takes the
	 * lookups with it (they run when it leaves), so none overtakes it. */
	if (held)
		conn_held_ack_set(held, out, n);
	else if (n)
		conn_queue_ctrl(c, out, n);
	cur = i = 0;
	for (; mqtt_subscribe_next(&sub, &cur, &e); i++) {
		char *mounted;
		if (reasons[i] > 2 || !sub_wants_retained(&e, added[i]) ||
		    conn_mount(c, &e.filter, &mounted) < 0)
			continue;
		const char *f = (const char *)e.filter.ptr;
		uint16_t flen = (uint16_t)e.filter.len;
		if (!held)
			route_retained(c->shard, c->session, f, flen, reasons[i], sub_id);
		else if (!conn_held_ack_retained(held, f, flen, reasons[i],
						 sub_id))
			log_msg(KITE_LOG_WARNING, "out of memory: retained "
				"messages for %.*s not sent", (int)flen, f);
		free(mounted);
	}
	if (held) {
		persist_hold(c, held); /* the subscriptions are durable first */
		conn_release_ack(c, held); /* the handler's own confirmation */
	}
	free(reasons);
	free(added);
	free(out);
	return 0;
}
