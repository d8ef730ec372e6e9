/* The PROXY protocol on a connection (io/proxyconn.c; core/proxyproto.h
 * parses the header): part of the connection layer, before any TLS. */
#ifndef KITE_IO_PROXYCONN_H
#define KITE_IO_PROXYCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io/conn-t.h"

/* Takes the PROXY header off the front of received bytes
 * (c->proxy_await set). True when bytes past the header are left in
 * *data, *len for the layers above; false when all were consumed or the
 * connection is closing. */
bool proxyconn_on_data(struct conn *c, const uint8_t **data, size_t *len);

#endif
