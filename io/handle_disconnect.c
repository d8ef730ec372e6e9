/* DISCONNECT from a client (spec 3.14): no will, unless an MQTT 5 client
 * asks for it with reason 0x04. */
#include <stdlib.h>

#include "io/engine.h"

int handle_disconnect(struct conn *c, const struct mqtt_fixed_header *h,
		      const uint8_t *body, size_t len)
{
	struct mqtt_disconnect d;
	enum mqtt_rc rc = mqtt_decode_disconnect(body, len, c->version, &d);
	if (rc != MQTT_RC_SUCCESS) {
		conn_protocol_error(c, rc, "invalid DISCONNECT");
		return -1;
	}
	bool will = c->version == MQTT_V5 &&
		    d.reason == MQTT_RC_DISCONNECT_WITH_WILL;
	conn_close(c, "disconnected", will);
	return -1;
}
