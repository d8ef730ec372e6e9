/* Broker log: Mosquitto-style lines ("1700000000: message") to the
 * configured destinations, filtered by type. Safe from any thread: each
 * line goes out in one write(). Not for the per-message data path. */
#ifndef KITE_LOG_H
#define KITE_LOG_H

#include "config.h"

/* Takes log_dest, log_type and log_file from cfg; may be called again on
 * reload. Before the first call, errors and notices go to stderr. Returns
 * -1 if the log file cannot be opened (and keeps the old setting). */
int log_configure(const struct kite_config *cfg);

void log_msg(enum kite_log_type type, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* True if lines of this type would be written (skip formatting cost). */
bool log_enabled(enum kite_log_type type);

void log_close(void);

#endif
