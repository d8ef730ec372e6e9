/* The packet handlers by type: one file per MQTT packet type (spec
 * sections), dispatched by this table, which the broker hands to the
 * connection layer (conn_upcalls). */
#include "io/handle.h"

const packet_handler handle_table[16] = {
	[MQTT_CONNECT] = handle_connect,
	[MQTT_PUBLISH] = handle_publish,
	[MQTT_PUBACK] = handle_ack,
	[MQTT_PUBREC] = handle_ack,
	[MQTT_PUBREL] = handle_ack,
	[MQTT_PUBCOMP] = handle_ack,
	[MQTT_SUBSCRIBE] = handle_subscribe,
	[MQTT_UNSUBSCRIBE] = handle_unsubscribe,
	[MQTT_PINGREQ] = handle_pingreq,
	[MQTT_DISCONNECT] = handle_disconnect,
};
