/* PINGREQ (spec 3.12). */
#include "io/conn.h"
#include "io/handle.h"

int handle_pingreq(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len)
{
	if (len != 0) {
		conn_protocol_error(c, MQTT_RC_MALFORMED_PACKET,
				    "PINGREQ with a body");
		return -1;
	}
	uint8_t buf[2];
	conn_queue_ctrl(c, buf, mqtt_encode_pingresp(buf, sizeof(buf)));
	return 0;
}
