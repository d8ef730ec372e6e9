/* libFuzzer target for SUBSCRIBE (io/handle_subscribe.c), driven as tests/fuzz/fuzz_handle.h says. */
#define FUZZ_PACKET_TYPE MQTT_SUBSCRIBE
#include "tests/fuzz/fuzz_handle.h"
