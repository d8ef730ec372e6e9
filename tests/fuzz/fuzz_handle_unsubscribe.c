/* libFuzzer target for UNSUBSCRIBE (io/handle_unsubscribe.c), driven as tests/fuzz/fuzz_handle.h says. */
#define FUZZ_PACKET_TYPE MQTT_UNSUBSCRIBE
#include "tests/fuzz/fuzz_handle.h"
