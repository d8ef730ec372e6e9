/* Broker log. By default formatted as Mosquitto 2.0.11's src/logging.c
 * does: "<unix seconds>: <message>" (or log_timestamp_format, or no stamp
 * with log_timestamp false), one line per call, to stdout, stderr and a
 * file (opened for append, 0600); syslog(3) gets the message alone, as
 * Mosquitto sends it, under log_facility. kite's own log_format adds JSON
 * lines for log shippers and journald's "<N>message" lines; stderr takes
 * the journald form by itself when it is the journal (JOURNAL_STREAM names
 * its device and inode, systemd.exec(5)), so lines carry no second
 * timestamp and keep their priority.
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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* A whole line, whatever its format; longer messages are cut. Mosquitto's
 * line buffer is 1000 bytes. */
#define LOG_LINE_MAX 1024
/* The message alone; a line then cuts it to what fits (JSON may escape
 * one byte into six). */
#define LOG_MSG_MAX LOG_LINE_MAX
#define LOG_STAMP_MAX 128
_Static_assert(LOG_LINE_MAX <= PIPE_BUF, "a line must be one atomic write");
_Static_assert(LOG_STAMP_MAX < LOG_LINE_MAX / 2, "a stamp leaves room");

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

/* How lines look. A reload that changes them publishes a new copy; the
 * old one stays readable (a writer may hold it) until log_close. */
struct log_style {
	enum kite_log_format format;	   /* stdout and the file */
	enum kite_log_format stderr_format; /* journald detection applied */
	bool timestamp;
	char ts_format[KITE_LOG_TS_FORMAT_MAX];
	struct log_style *retired; /* older copies, freed by log_close */
};

static const struct log_style log_style_default = {
	.format = KITE_LOG_FORMAT_MOSQUITTO,
	.stderr_format = KITE_LOG_FORMAT_MOSQUITTO,
	.timestamp = true,
};

/* The types that reach some destination: 0 when nothing would be written,
 * so log_enabled() is a single relaxed load. */
static _Atomic unsigned log_types = LOG_TYPES_DEFAULT;
static _Atomic unsigned log_dests = LOG_DESTS_DEFAULT;
static const struct log_style *_Atomic log_style = &log_style_default;
static struct log_style *log_style_owned; /* control thread only */
/* The log file. Never closed while logging may run (only by log_close):
 * a reopen replaces the file behind the same descriptor number. */
static _Atomic int log_fd = -1;
static bool log_syslog_open; /* control thread only */
static int log_syslog_facility;

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

bool log_stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 ||
	    fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev &&
	       (unsigned long long)st.st_ino == ino;
}

static void log_style_set(const struct kite_config *cfg)
{
	struct log_style next = {
		.format = cfg->log_format,
		.stderr_format = cfg->log_format,
		.timestamp = cfg->log_timestamp,
	};
	memcpy(next.ts_format, cfg->log_timestamp_format,
	       sizeof(next.ts_format));
	next.ts_format[sizeof(next.ts_format) - 1] = '\0';
	if (!cfg->log_format_set && log_stderr_is_journal())
		next.stderr_format = KITE_LOG_FORMAT_JOURNAL;
	const struct log_style *cur = atomic_load(&log_style);
	if (cur->format == next.format &&
	    cur->stderr_format == next.stderr_format &&
	    cur->timestamp == next.timestamp &&
	    !strcmp(cur->ts_format, next.ts_format))
		return;
	struct log_style *copy = malloc(sizeof(*copy));
	if (!copy)
		return; /* the old style stays: lines still go out */
	*copy = next;
	copy->retired = log_style_owned;
	log_style_owned = copy;
	atomic_store(&log_style, copy);
}

int log_configure(const struct kite_config *cfg)
{
	assert(cfg);
	unsigned dests = cfg->log_dest;
	if ((dests & KITE_LOGDEST_FILE) && log_file_open(cfg->log_file) < 0)
		return -1; /* nothing changed yet: the old setting stays */
	int facility = cfg->log_facility < 0 ? LOG_DAEMON
					     : LOG_LOCAL0 + (cfg->log_facility << 3);
	if ((dests & KITE_LOGDEST_SYSLOG) &&
	    (!log_syslog_open || facility != log_syslog_facility)) {
		openlog("kite", LOG_PID | LOG_NDELAY, facility);
		log_syslog_open = true;
		log_syslog_facility = facility;
	}
	log_style_set(cfg);
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

/* Mosquitto's log_type names, for the JSON "type" field. */
static const char *log_type_name(enum kite_log_type type)
{
	switch (type) {
	case KITE_LOG_ERR: return "error";
	case KITE_LOG_WARNING: return "warning";
	case KITE_LOG_NOTICE: return "notice";
	case KITE_LOG_INFO: return "information";
	case KITE_LOG_DEBUG: return "debug";
	case KITE_LOG_SUBSCRIBE: return "subscribe";
	case KITE_LOG_UNSUBSCRIBE: return "unsubscribe";
	default: return "websockets";
	}
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if none. */
static size_t log_utf8_len(const unsigned char *p, size_t n)
{
	size_t len = p[0] >= 0xf0 && p[0] <= 0xf4 ? 4
		     : p[0] >= 0xe0		  ? 3
		     : p[0] >= 0xc2 && p[0] < 0xe0 ? 2
						   : 0;
	if (!len || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((len == 3 && p[0] == 0xe0 && p[1] < 0xa0) ||
	    (len == 3 && p[0] == 0xed && p[1] >= 0xa0) ||
	    (len == 4 && p[0] == 0xf0 && p[1] < 0x90) ||
	    (len == 4 && p[0] == 0xf4 && p[1] >= 0x90))
		return 0;
	return len;
}

/* Appends msg as the body of a JSON string; bytes that are not UTF-8
 * (a client id may hold anything) become U+FFFD. Returns the new length,
 * never past cap - 3 (room for the closing quote, brace and newline). */
static size_t log_json_escape(char *out, size_t off, size_t cap,
			      const char *msg)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)msg;
	size_t n = strlen(msg);
	for (size_t i = 0; i < n;) {
		char esc[8];
		size_t elen = 0, take = 1;
		const char *src = esc;
		if (p[i] == '"' || p[i] == '\\') {
			esc[0] = '\\', esc[1] = (char)p[i], elen = 2;
		} else if (p[i] < 0x20 || p[i] == 0x7f) {
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[p[i] >> 4], esc[5] = hex[p[i] & 15];
			elen = 6;
		} else if (p[i] < 0x80) {
			esc[0] = (char)p[i], elen = 1;
		} else if ((take = log_utf8_len(p + i, n - i))) {
			src = (const char *)p + i, elen = take;
		} else {
			take = 1;
			memcpy(esc, "\\ufffd", 6), elen = 6;
		}
		if (off + elen > cap - 3)
			break;
		memcpy(out + off, src, elen);
		off += elen;
		i += take;
	}
	return off;
}

/* The Mosquitto-style stamp with its ": ", or "" without log_timestamp. */
static void log_stamp(const struct log_style *st, time_t now,
		      char out[LOG_STAMP_MAX])
{
	out[0] = '\0';
	if (!st->timestamp)
		return;
	if (!st->ts_format[0]) {
		snprintf(out, LOG_STAMP_MAX, "%" PRId64 ": ", (int64_t)now);
		return;
	}
	struct tm tm;
	size_t n = localtime_r(&now, &tm)
			   ? strftime(out, LOG_STAMP_MAX - 2, st->ts_format, &tm)
			   : 0;
	memcpy(out + n, ": ", 3); /* Mosquitto: "%s: %s\n" */
}

/* One line of the given format into line; returns its length. */
static size_t log_render(enum kite_log_format format,
			 const struct log_style *st, enum kite_log_type type,
			 const struct timespec *now, const char *msg,
			 char line[LOG_LINE_MAX])
{
	int n;
	switch (format) {
	case KITE_LOG_FORMAT_JOURNAL:
		n = snprintf(line, LOG_LINE_MAX, "<%d>%s\n",
			     log_syslog_priority(type), msg);
		break;
	case KITE_LOG_FORMAT_JSON: {
		struct tm tm;
		char iso[32] = "";
		if (gmtime_r(&now->tv_sec, &tm))
			strftime(iso, sizeof(iso), "%Y-%m-%dT%H:%M:%S", &tm);
		n = snprintf(line, LOG_LINE_MAX,
			     "{\"time\":\"%s.%03ldZ\",\"unix\":%" PRId64
			     ".%03ld,\"type\":\"%s\",\"priority\":%d,"
			     "\"message\":\"",
			     iso, now->tv_nsec / 1000000, (int64_t)now->tv_sec,
			     now->tv_nsec / 1000000, log_type_name(type),
			     log_syslog_priority(type));
		assert(n > 0 && n < LOG_LINE_MAX / 2);
		size_t len = log_json_escape(line, (size_t)n, LOG_LINE_MAX, msg);
		memcpy(line + len, "\"}\n", 3);
		return len + 3;
	}
	default: {
		char stamp[LOG_STAMP_MAX];
		log_stamp(st, now->tv_sec, stamp);
		n = snprintf(line, LOG_LINE_MAX, "%s%s\n", stamp, msg);
		break;
	}
	}
	assert(n > 0);
	if (n >= LOG_LINE_MAX) { /* cut: the newline still ends it */
		line[LOG_LINE_MAX - 1] = '\n';
		return LOG_LINE_MAX;
	}
	return (size_t)n;
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
	char msg[LOG_MSG_MAX], line[LOG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	const struct log_style *st =
		atomic_load_explicit(&log_style, memory_order_acquire);
	unsigned dests = atomic_load_explicit(&log_dests, memory_order_relaxed);
	size_t len = 0;
	if (dests & (KITE_LOGDEST_STDOUT | KITE_LOGDEST_FILE))
		len = log_render(st->format, st, type, &now, msg, line);
	if (dests & KITE_LOGDEST_STDOUT)
		log_write(STDOUT_FILENO, line, len);
	if (dests & KITE_LOGDEST_FILE) {
		int fd = atomic_load_explicit(&log_fd, memory_order_acquire);
		if (fd >= 0)
			log_write(fd, line, len);
	}
	if (dests & KITE_LOGDEST_STDERR) {
		if (!len || st->stderr_format != st->format)
			len = log_render(st->stderr_format, st, type, &now, msg,
					 line);
		log_write(STDERR_FILENO, line, len);
	}
	if (dests & KITE_LOGDEST_SYSLOG)
		syslog(log_syslog_priority(type), "%s", msg);
	errno = saved_errno;
}

/* Back to the defaults (stderr; errors to information). Not to be called
 * while other threads may log. */
void log_close(void)
{
	atomic_store(&log_types, LOG_TYPES_DEFAULT);
	atomic_store(&log_dests, LOG_DESTS_DEFAULT);
	atomic_store(&log_style, &log_style_default);
	while (log_style_owned) {
		struct log_style *st = log_style_owned;
		log_style_owned = st->retired;
		free(st);
	}
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
