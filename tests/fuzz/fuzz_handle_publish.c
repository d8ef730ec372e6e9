/* libFuzzer target for PUBLISH (io/handle_publish.c), QoS and retain from the flags, driven as tests/fuzz/fuzz_handle.h says. */
#define FUZZ_PACKET_TYPE MQTT_PUBLISH
#include "tests/fuzz/fuzz_handle.h"
