/* Kernel TLS for a connection (io/ktls.c): the hand-off from OpenSSL to
 * the kernel, and the TLS records the kernel leaves to kite. */
#ifndef KITE_IO_KTLS_H
#define KITE_IO_KTLS_H

#include <stdbool.h>
#include <stdint.h>

#include "io/conn-t.h"

void ktls_begin(struct conn *c);
void ktls_try(struct conn *c);
void ktls_control_record(struct conn *c);
/* conn_flush: submits the next owed control record; false if none is
 * due now. conn_on_send_done reports its completion. */
bool ktls_send_control(struct conn *c);
void ktls_control_sent(struct conn *c, uint8_t record_type, int res);

#endif
