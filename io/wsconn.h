/* MQTT over WebSockets (io/wsconn.c; ws/ws.h does the protocol). */
#ifndef KITE_IO_WSCONN_H
#define KITE_IO_WSCONN_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "io/conn-t.h"

int wsconn_attach(struct conn *c, const struct kite_config *cfg,
		  const struct kite_listener_cfg *l);
/* Received bytes of a WebSocket connection, after any TLS. */
void wsconn_on_data(struct conn *c, const uint8_t *data, size_t len);

#endif
