/* Broker log: Mosquitto-style lines ("1700000000: message") by default,
 * or JSON / journald lines (log_format), to the configured destinations,
 * filtered by type. Safe from any thread: each
 * line goes out in one write(). Not for the per-message data path. */
#ifndef KITE_LOG_H
#define KITE_LOG_H

#include <stdint.h>

#include "config.h"

/* Takes log_dest, log_type, log_file, log_facility, log_timestamp,
 * log_timestamp_format and log_format from cfg; may be called again on
 * reload. Before the first call, errors and notices go to stderr. Returns
 * -1 if the log file cannot be opened (and keeps the old setting). */
int log_configure(const struct kite_config *cfg);

void log_msg(enum kite_log_type type, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* True if lines of this type would be written (skip formatting cost). */
bool log_enabled(enum kite_log_type type);

void log_close(void);

/* True when stderr is the systemd journal (JOURNAL_STREAM names it). */
bool log_stderr_is_journal(void);

/* Lines about one thing that a peer can make happen at any rate (refused
 * connections, failed accepts): at most `burst` lines per window, then one
 * line saying how many were left out. Owned by one thread. */
struct log_limit {
	uint64_t window_start_ms;
	uint32_t lines;	     /* written in this window */
	uint32_t suppressed; /* left out in this window */
};

#define LOG_LIMIT_WINDOW_MS 10000u

/* True if this line may be written now. When a window ends with lines
 * left out, *suppressed receives their count (else 0): say so first. */
bool log_limit_take(struct log_limit *l, uint64_t now_ms, uint32_t burst,
		    uint32_t *suppressed);
/* For a timer: the lines left out of a window that has ended since
 * (0 if none, or it has not ended); they are then forgotten. */
uint32_t log_limit_flush(struct log_limit *l, uint64_t now_ms);

#endif
