/* Broker log, formatted as Mosquitto 2.0.11's src/logging.c does with its
 * default log_timestamp: "<unix seconds>: <message>", one line per call, to
 * stdout, stderr, a file (opened for append, 0600) and/or syslog (with the
 * same line, as Mosquitto sends it).
 *
 * Threads: log_msg() and log_enabled() may run on any thread at any time.
 * They only read atomics and call write(2)/syslog(3), and a line is built
 * in a stack buffer no longer than PIPE_BUF, so each line is one write that
 * never interleaves with another thread's. log_configure() and log_close()
 * belong to the control thread (startup, SIGHUP, shutdown). */
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* Timestamp, message and newline; longer messages are cut. Mosquitto's
 * line buffer is 1000 bytes. */
#define LOG_LINE_MAX 1024
_Static_assert(LOG_LINE_MAX <= PIPE_BUF, "a line must be one atomic write");

/* Mosquitto's compiled-in defaults (config__init_reload, and logging.c's
 * initial log_destinations/log_priorities): stderr; error, warning,
 * notice and information. */
#define LOG_TYPES_DEFAULT \
	(KITE_LOG_ERR | KITE_LOG_WARNING | KITE_LOG_NOTICE | KITE_LOG_INFO)
#define LOG_DESTS_DEFAULT KITE_LOGDEST_STDERR

/* Destinations this module writes itself. KITE_LOGDEST_TOPIC belongs to the
 * broker's $SYS publisher. */
#define LOG_DESTS_WRITTEN                                                 \
	(KITE_LOGDEST_STDOUT | KITE_LOGDEST_STDERR | KITE_LOGDEST_SYSLOG | \
	 KITE_LOGDEST_FILE)

/* The types that reach some destination: 0 when nothing would be written,
 * so log_enabled() is a single relaxed load. */
static _Atomic unsigned log_types = LOG_TYPES_DEFAULT;
static _Atomic unsigned log_dests = LOG_DESTS_DEFAULT;
/* The log file. Never closed while logging may run (only by log_close):
 * a reopen replaces the file behind the same descriptor number. */
static _Atomic int log_fd = -1;
static bool log_syslog_open; /* control thread only */

/* Opens path for appending and makes log_fd refer to it. */
static int log_file_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY,
		      0600);
	if (fd < 0)
		return -1;
	int old = atomic_load(&log_fd);
	if (old < 0) {
		atomic_store(&log_fd, fd);
		return 0;
	}
	/* dup3 swaps the open file atomically: a writer racing with this
	 * reaches the old file or the new one, never a closed or reused
	 * descriptor. */
	int rc = dup3(fd, old, O_CLOEXEC);
	int e = errno;
	close(fd);
	errno = e;
	return rc < 0 ? -1 : 0;
}

int log_configure(const struct kite_config *cfg)
{
	assert(cfg);
	unsigned dests = cfg->log_dest;
	if ((dests & KITE_LOGDEST_FILE) && log_file_open(cfg->log_file) < 0)
		return -1; /* nothing changed yet: the old setting stays */
	if ((dests & KITE_LOGDEST_SYSLOG) && !log_syslog_open) {
		openlog("kite", LOG_PID | LOG_NDELAY, LOG_DAEMON);
		log_syslog_open = true;
	}
	atomic_store(&log_dests, dests);
	atomic_store(&log_types,
		     (dests & LOG_DESTS_WRITTEN) ? cfg->log_type : 0u);
	return 0;
}

bool log_enabled(enum kite_log_type type)
{
	return (atomic_load_explicit(&log_types, memory_order_relaxed) &
		(unsigned)type) != 0;
}

/* Mosquitto's syslog priorities (log__vprintf). */
static int log_syslog_priority(enum kite_log_type type)
{
	switch (type) {
	case KITE_LOG_WARNING:
		return LOG_WARNING;
	case KITE_LOG_NOTICE:
	case KITE_LOG_SUBSCRIBE:
	case KITE_LOG_UNSUBSCRIBE:
		return LOG_NOTICE;
	case KITE_LOG_INFO:
		return LOG_INFO;
	case KITE_LOG_DEBUG:
	case KITE_LOG_WEBSOCKETS:
		return LOG_DEBUG;
	default:
		return LOG_ERR;
	}
}

/* Formats "<time>: <message>\n" into line; returns its length (no NUL). */
static size_t log_format(char line[LOG_LINE_MAX], const char *fmt,
			 va_list ap)
{
	int n = snprintf(line, LOG_LINE_MAX, "%" PRId64 ": ",
			 (int64_t)time(NULL));
	assert(n > 0 && n < LOG_LINE_MAX / 2);
	size_t room = LOG_LINE_MAX - (size_t)n; /* message + its NUL */
	int m = vsnprintf(line + n, room, fmt, ap);
	size_t used = m < 0 ? 0 : (size_t)m < room ? (size_t)m : room - 1;
	size_t len = (size_t)n + used;
	line[len] = '\n'; /* replaces the NUL; len < LOG_LINE_MAX */
	return len + 1;
}

/* One write per line; a failed log write has nowhere to be reported. */
static void log_write(int fd, const char *line, size_t len)
{
	ssize_t n;
	do {
		n = write(fd, line, len);
	} while (n < 0 && errno == EINTR);
}

void log_msg(enum kite_log_type type, const char *fmt, ...)
{
	assert(fmt);
	assert(type != 0 && ((unsigned)type & ((unsigned)type - 1)) == 0);
	if (!log_enabled(type))
		return;
	int saved_errno = errno; /* callers may log strerror(errno) first */
	char line[LOG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	size_t len = log_format(line, fmt, ap);
	va_end(ap);

	unsigned dests = atomic_load_explicit(&log_dests, memory_order_relaxed);
	if (dests & KITE_LOGDEST_STDOUT)
		log_write(STDOUT_FILENO, line, len);
	if (dests & KITE_LOGDEST_STDERR)
		log_write(STDERR_FILENO, line, len);
	if (dests & KITE_LOGDEST_FILE) {
		int fd = atomic_load_explicit(&log_fd, memory_order_acquire);
		if (fd >= 0)
			log_write(fd, line, len);
	}
	if (dests & KITE_LOGDEST_SYSLOG)
		syslog(log_syslog_priority(type), "%.*s", (int)(len - 1), line);
	errno = saved_errno;
}

/* Back to the defaults (stderr; errors to information). Not to be called
 * while other threads may log. */
void log_close(void)
{
	atomic_store(&log_types, LOG_TYPES_DEFAULT);
	atomic_store(&log_dests, LOG_DESTS_DEFAULT);
	int fd = atomic_exchange(&log_fd, -1);
	if (fd >= 0)
		close(fd);
	if (log_syslog_open) {
		closelog();
		log_syslog_open = false;
	}
}

bool log_limit_take(struct log_limit *l, uint64_t now_ms, uint32_t burst,
		    uint32_t *suppressed)
{
	*suppressed = 0;
	if (now_ms - l->window_start_ms >= LOG_LIMIT_WINDOW_MS) {
		*suppressed = l->suppressed;
		l->window_start_ms = now_ms;
		l->lines = 0;
		l->suppressed = 0;
	}
	if (l->lines < burst) {
		l->lines++;
		return true;
	}
	l->suppressed++;
	return false;
}

uint32_t log_limit_flush(struct log_limit *l, uint64_t now_ms)
{
	if (!l->suppressed || now_ms - l->window_start_ms < LOG_LIMIT_WINDOW_MS)
		return 0;
	uint32_t n = l->suppressed;
	l->window_start_ms = now_ms;
	l->lines = 0;
	l->suppressed = 0;
	return n;
}
