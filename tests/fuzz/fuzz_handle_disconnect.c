/* libFuzzer target for DISCONNECT (io/handle_disconnect.c), reason and properties, driven as tests/fuzz/fuzz_handle.h says. */
#define FUZZ_PACKET_TYPE MQTT_DISCONNECT
#include "tests/fuzz/fuzz_handle.h"
