/* libFuzzer target for PINGREQ (io/handle_pingreq.c), driven as tests/fuzz/fuzz_handle.h says. */
#define FUZZ_PACKET_TYPE MQTT_PINGREQ
#include "tests/fuzz/fuzz_handle.h"
