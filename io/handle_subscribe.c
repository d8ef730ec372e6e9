/* SUBSCRIBE (spec 3.8): SUBACK first, then the retained messages. */
#include <stdlib.h>

#include "core/log.h"
#include "io/engine.h"

int handle_subscribe(struct conn *c, const struct mqtt_fixed_header *h,
		     const uint8_t *body, size_t len)
{
	struct mqtt_subscribe sub;
	enum mqtt_rc rc = mqtt_decode_subscribe(body, len, c->version, &sub);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid SUBSCRIBE");
		return -1;
	}
	struct session *ss = c->session;
	uint8_t *reasons = malloc(sub.count);
	uint8_t *out = malloc((size_t)sub.count + 16);
	if (!reasons || !out) {
		free(reasons);
		free(out);
		conn_close(c, "out of memory", false);
		return -1;
	}
	uint32_t cur = 0, i = 0;
	struct mqtt_sub_entry e;
	while (mqtt_subscribe_next(&sub, &cur, &e)) {
		uint8_t granted = e.qos;
		if (session_add_sub(ss, (const char *)e.filter.ptr,
				    (uint16_t)e.filter.len, granted) < 0)
			granted = MQTT_RC_UNSPECIFIED;
		reasons[i++] = granted;
		if (log_enabled(KITE_LOG_SUBSCRIBE))
			log_msg(KITE_LOG_SUBSCRIBE, "%s %u %.*s", ss->client_id,
				e.qos, (int)e.filter.len, e.filter.ptr);
	}
	size_t n = mqtt_encode_suback(out, (size_t)sub.count + 16, MQTT_SUBACK,
				      c->version, sub.packet_id, reasons, i, NULL);
	if (n)
		conn_queue_ctrl(c, out, n);
	cur = i = 0;
	while (mqtt_subscribe_next(&sub, &cur, &e))
		if (reasons[i++] <= 2)
			route_retained(c->shard, ss, (const char *)e.filter.ptr,
				       (uint16_t)e.filter.len, reasons[i - 1]);
	free(reasons);
	free(out);
	return 0;
}
