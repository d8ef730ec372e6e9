/* UNSUBSCRIBE (spec 3.10). */
#include <stdlib.h>

#include "core/log.h"
#include "io/conn.h"
#include "io/handle.h"
#include "io/persist.h"
#include "io/session.h"
#include "io/share.h"

int handle_unsubscribe(struct conn *c, const struct mqtt_fixed_header *h,
		       const uint8_t *body, size_t len)
{
	struct mqtt_subscribe un;
	enum mqtt_rc rc = mqtt_decode_unsubscribe(body, len, c->version, &un);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid UNSUBSCRIBE");
		return -1;
	}
	uint8_t *reasons = malloc(un.count);
	uint8_t *out = malloc((size_t)un.count + 16);
	if (!reasons || !out) {
		free(reasons);
		free(out);
		conn_close(c, "out of memory", false);
		return -1;
	}
	uint32_t cur = 0, i = 0;
	struct mqtt_bytes f;
	/* As for SUBACK: an UNSUBACK naming a shared subscription homed on
	 * another shard leaves once that shard removed the member. */
	bool any_shared = conn_holds_acks(c) || persist_pending(c);
	const char *key;
	uint16_t klen;
	while (mqtt_unsubscribe_next(&un, &cur, &f))
		any_shared |= share_parse((const char *)f.ptr, (uint16_t)f.len,
					  &key, &klen);
	struct held_ack *held = any_shared ? conn_hold_ack(c, (size_t)un.count + 16)
					   : NULL;
	cur = 0;
	while (mqtt_unsubscribe_next(&un, &cur, &f)) {
		char *mounted;
		int had = conn_mount(c, &f, &mounted) < 0
				  ? 0
				  : session_remove_sub(c->session,
						       (const char *)f.ptr,
						       (uint16_t)f.len, held);
		free(mounted);
		reasons[i++] = had ? MQTT_RC_SUCCESS
				   : MQTT_RC_NO_SUBSCRIPTION_EXISTED;
		if (log_enabled(KITE_LOG_UNSUBSCRIBE))
			log_msg(KITE_LOG_UNSUBSCRIBE, "%s %.*s",
				c->session->client_id, (int)f.len, f.ptr);
	}
	size_t n = mqtt_encode_suback(out, (size_t)un.count + 16, MQTT_UNSUBACK,
				      c->version, un.packet_id, reasons, i, NULL);
	if (held)
		persist_hold(c, held); /* the removals are durable first */
	conn_send_ack(c, held, out, n);
	free(reasons);
	free(out);
	return 0;
}
