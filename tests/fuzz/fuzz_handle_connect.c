/* libFuzzer target for CONNECT (io/handle_connect.c): the whole variable header, payload and properties, driven as tests/fuzz/fuzz_handle.h says. */
#define FUZZ_PACKET_TYPE MQTT_CONNECT
#include "tests/fuzz/fuzz_handle.h"
