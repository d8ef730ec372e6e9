/* DISCONNECT from a client (spec 3.14): no will, unless an MQTT 5 client
 * asks for it with reason 0x04. */
#include <stdlib.h>

#include "io/conn.h"
#include "io/handle.h"

int handle_disconnect(struct conn *c, const struct mqtt_fixed_header *h,
		      const uint8_t *body, size_t len)
{
	struct mqtt_disconnect d;
	enum mqtt_rc rc = mqtt_decode_disconnect(body, len, c->version, &d);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid DISCONNECT");
		return -1;
	}
	struct session *ss = c->session;
	if (d.props.present & MQTT_PROP_BIT(MQTT_PROP_SESSION_EXPIRY_INTERVAL)) {
		/* Spec 3.14.2.2.2: 0 at CONNECT cannot become non-zero. */
		if (ss->expiry_s == 0 && d.props.session_expiry_interval) {
			conn_protocol_error(c, MQTT_RC_PROTOCOL_ERROR,
					    "session expiry set at DISCONNECT");
			return -1;
		}
		ss->expiry_s = d.props.session_expiry_interval;
		ss->persistent = ss->expiry_s != 0;
	}
	bool will = c->version == MQTT_V5 &&
		    d.reason == MQTT_RC_DISCONNECT_WITH_WILL;
	conn_close(c, "disconnected", will);
	return -1;
}
