/* libFuzzer target for PUBACK, PUBREC, PUBREL and PUBCOMP
 * (io/handle_ack.c), driven as tests/fuzz/fuzz_handle.h says; bits 1-2
 * of the flags byte pick the type. */
#define FUZZ_PACKET_TYPE (MQTT_PUBACK + ((data[0] >> 1) & 3))
#include "tests/fuzz/fuzz_handle.h"
