/* Mosquitto's configuration language, as Mosquitto 2.0.11 reads it
 * (src/conf.c, src/conf_includedir.c), with three deliberate differences:
 *
 * - Numbers are strict (Mosquitto uses atoi: "12abc" is 12, "abc" is 0).
 * - An extra argument is an error (Mosquitto ignores it), except that a
 *   token starting with '#' ends the arguments, as Mosquitto's `listener`
 *   does: "allow_anonymous true # note" means the same to both.
 * - Tabs separate words like spaces, and '#' after leading blanks starts a
 *   comment (Mosquitto only splits on ' ' and only knows '#' in column 0,
 *   so such lines are errors there): kite accepts a superset.
 *
 * Options kite does not implement are errors, never silently ignored; the
 * message says whether Mosquitto knows the option ("not supported yet") or
 * nobody does ("unknown option"). Nothing here touches a socket, resolves a
 * name or opens a file other than the config files themselves. */
#include "config.h"

#include <assert.h>
#include <sched.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bounds on what a config may make us read or hold. A file must be
 * smaller than CONFIG_FILE_BYTES_MAX, a power of two times 4096. */
#define CONFIG_FILE_BYTES_MAX (4u << 20)
#define CONFIG_INCLUDE_FILES_MAX 1024
#define CONFIG_ARGS_MAX 2 /* no supported option takes more */

#define CONFIG_DEFAULT_PORT 1883
#define CONFIG_LOCAL_ADDRESS "127.0.0.1"
#define MQTT_PAYLOAD_MAX 268435455 /* Mosquitto's message_size_limit cap */

#define LOG_TYPES_DEFAULT \
	(KITE_LOG_ERR | KITE_LOG_WARNING | KITE_LOG_NOTICE | KITE_LOG_INFO)

_Static_assert(KITE_LISTENERS_MAX >= 1, "local-only mode needs a listener");
_Static_assert(KITE_SHARDS_MAX >= 1, "need at least one shard");
_Static_assert(KITE_CONFIG_ERR_MAX >= 64, "error buffer too small");

/* State for one config_load() call, shared by the main file and every file
 * it includes. */
struct load_state {
	struct kite_config *cfg;
	char *err;
	size_t errlen;
	/* Mosquitto's "default listener": what `port` and `bind_address` set,
	 * and where listener options given before any `listener` line go.
	 * Appended to cfg->listeners after parsing if port or bind_address
	 * was given (Mosquitto's config__parse_args); otherwise dropped, as
	 * Mosquitto does. */
	struct kite_listener_cfg deflt;
	bool deflt_configured; /* port or bind_address seen */
	bool deflt_host_set;
	/* The first log_dest / log_type line replaces the default set; later
	 * ones add to it (Mosquitto's struct config_recurse). */
	bool log_dest_set;
	bool log_type_set;
	/* A security option (allow_anonymous) was seen: per_listener_settings
	 * true may no longer follow (Mosquitto's cur_security_options). */
	bool security_set;
	bool pid_file_set;
};

/* The file being parsed. Each file starts with the default listener as
 * its current one: Mosquitto's cur_listener is local to each file. */
struct file_ctx {
	struct load_state *st;
	const char *file;
	int line;
	int level; /* 0 = the main file */
	struct kite_listener_cfg *cur;
};

typedef int (*option_fn)(struct file_ctx *fc, const char *name, char *rest);

struct option {
	const char *name;
	option_fn fn;
};

/* ---- messages ---------------------------------------------------------- */

/* Writes "FILE:LINE: message" and returns -1. */
__attribute__((format(printf, 2, 3))) static int fail(struct file_ctx *fc,
						      const char *fmt, ...)
{
	struct load_state *st = fc->st;
	int n = snprintf(st->err, st->errlen, "%s:%d: ", fc->file, fc->line);
	if (n >= 0 && (size_t)n < st->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(st->err + n, st->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* Writes "FILE: strerror(errnum)" (an unreadable file) and returns -1. */
static int fail_file(struct load_state *st, const char *file, int errnum)
{
	snprintf(st->err, st->errlen, "%s: %s", file, strerror(errnum));
	return -1;
}

/* ---- words and values -------------------------------------------------- */

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_space(char c)
{
	return is_blank(c) || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static char *skip_blanks(char *s)
{
	while (is_blank(*s))
		s++;
	return s;
}

/* Splits `rest` in place into at most max + 1 blank-separated words (one
 * more than allowed, so the caller can name the extra one). A word starting
 * with '#' ends the list: it is a trailing comment. */
static int split_args(char *rest, char **argv, int max)
{
	int argc = 0;
	char *p = skip_blanks(rest);
	while (*p && *p != '#' && argc <= max) {
		argv[argc++] = p;
		while (*p && !is_blank(*p))
			p++;
		if (*p)
			*p++ = '\0';
		p = skip_blanks(p);
	}
	return argc;
}

/* Exactly one word, or an error naming what the option expects. */
static int get_word(struct file_ctx *fc, const char *name, char *rest,
		    const char *expects, char **word)
{
	char *argv[CONFIG_ARGS_MAX + 1];
	int argc = split_args(rest, argv, 1);
	if (argc == 0)
		return fail(fc, "option '%s': missing value (expects %s)",
			    name, expects);
	if (argc > 1)
		return fail(fc, "option '%s': unexpected extra argument '%s'",
			    name, argv[1]);
	*word = argv[0];
	return 0;
}

/* Strict base-10 integer: optional '-', digits, nothing else. */
static bool parse_ll(const char *s, long long *out)
{
	const char *digits = s[0] == '-' ? s + 1 : s;
	if (*digits < '0' || *digits > '9')
		return false;
	errno = 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = v;
	return true;
}

static int get_int(struct file_ctx *fc, const char *name, char *rest,
		   long long lo, long long hi, const char *expects,
		   long long *out)
{
	char *word;
	if (get_word(fc, name, rest, expects, &word) < 0)
		return -1;
	if (!parse_ll(word, out) || *out < lo || *out > hi)
		return fail(fc, "option '%s': expects %s, got '%s'", name,
			    expects, word);
	return 0;
}

/* Mosquitto accepts true/false and, since 1.x, 1/0. */
static int get_bool(struct file_ctx *fc, const char *name, char *rest,
		    bool *out)
{
	static const char expects[] = "true or false";
	char *word;
	if (get_word(fc, name, rest, expects, &word) < 0)
		return -1;
	if (!strcmp(word, "true") || !strcmp(word, "1")) {
		*out = true;
	} else if (!strcmp(word, "false") || !strcmp(word, "0")) {
		*out = false;
	} else {
		return fail(fc, "option '%s': expects %s, got '%s'", name,
			    expects, word);
	}
	return 0;
}

/* The rest of the line (paths may contain blanks and '#', as in
 * Mosquitto), copied into dst. */
static int get_rest(struct file_ctx *fc, const char *name, const char *rest,
		    const char *expects, char *dst, size_t dstlen)
{
	size_t len = strlen(rest);
	if (len == 0)
		return fail(fc, "option '%s': missing value (expects %s)",
			    name, expects);
	if (len >= dstlen)
		return fail(fc, "option '%s': value longer than %zu bytes",
			    name, dstlen - 1);
	memcpy(dst, rest, len + 1);
	return 0;
}

static int copy_host(struct file_ctx *fc, const char *name, const char *host,
		     char dst[KITE_HOST_MAX])
{
	size_t len = strlen(host);
	if (len >= KITE_HOST_MAX)
		return fail(fc, "option '%s': address longer than %d bytes",
			    name, KITE_HOST_MAX - 1);
	memcpy(dst, host, len + 1);
	return 0;
}

/* Mosquitto runs string values through mosquitto_validate_utf8(): well
 * formed, no surrogates, no non-characters, no control characters. */
static bool utf8_valid(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	while (*s) {
		unsigned c = *s++;
		unsigned cp;
		int more;
		if (c < 0x80) {
			cp = c;
			more = 0;
		} else if (c >= 0xc2 && c <= 0xdf) {
			cp = c & 0x1f;
			more = 1;
		} else if ((c & 0xf0) == 0xe0) {
			cp = c & 0x0f;
			more = 2;
		} else if (c >= 0xf0 && c <= 0xf4) {
			cp = c & 0x07;
			more = 3;
		} else {
			return false;
		}
		for (int i = 0; i < more; i++, s++) {
			if ((*s & 0xc0) != 0x80)
				return false; /* also catches the final NUL */
			cp = (cp << 6) | (*s & 0x3f);
		}
		if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) ||
		    cp > 0x10ffff)
			return false; /* overlong or out of range */
		if ((cp >= 0xd800 && cp <= 0xdfff) ||
		    (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe)
			return false;
		if (cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f))
			return false;
	}
	return true;
}

static int check_utf8(struct file_ctx *fc, const char *name, const char *v)
{
	if (!utf8_valid(v))
		return fail(fc, "option '%s': value is not valid UTF-8 text",
			    name);
	return 0;
}

/* ---- listeners --------------------------------------------------------- */

static void listener_init(struct kite_listener_cfg *l, uint16_t port,
			  const char *file, int line)
{
	memset(l, 0, sizeof(*l));
	l->port = port;
	l->max_connections = -1;
	l->allow_anonymous = -1;
	snprintf(l->file, sizeof(l->file), "%s", file);
	l->line = line;
}

static const char *listener_addr(const struct kite_listener_cfg *l)
{
	return l->bind_address[0] ? l->bind_address : "all addresses";
}

/* listener PORT [BIND_ADDRESS]: starts a listener; the listener options
 * that follow in this file apply to it. */
static int opt_listener(struct file_ctx *fc, const char *name, char *rest)
{
	static const char expects[] = "a port number 1-65535";
	struct kite_config *cfg = fc->st->cfg;
	char *argv[CONFIG_ARGS_MAX + 1];
	int argc = split_args(rest, argv, 2);
	long long port;
	if (argc == 0)
		return fail(fc, "option '%s': missing value (expects %s)",
			    name, expects);
	if (argc > 2)
		return fail(fc, "option '%s': unexpected extra argument '%s'",
			    name, argv[2]);
	if (!parse_ll(argv[0], &port) || port < 0 || port > 65535 ||
	    (port == 0 && argc == 1))
		return fail(fc, "option '%s': expects %s, got '%s'", name,
			    expects, argv[0]);
	if (port == 0) /* Mosquitto: port 0 + path = unix socket */
		return fail(fc, "option '%s': unix socket listeners are not "
				"supported yet", name);
	if (cfg->listener_count >= KITE_LISTENERS_MAX)
		return fail(fc, "option '%s': too many listeners (at most %d)",
			    name, KITE_LISTENERS_MAX);

	struct kite_listener_cfg *l = &cfg->listeners[cfg->listener_count];
	listener_init(l, (uint16_t)port, fc->file, fc->line);
	if (argc == 2 && copy_host(fc, name, argv[1], l->bind_address) < 0)
		return -1;
	cfg->listener_count++;
	fc->cur = l;
	return 0;
}

/* The default listener is declared where port/bind_address first was. */
static void deflt_touch(struct file_ctx *fc)
{
	struct load_state *st = fc->st;
	if (!st->deflt_configured) {
		snprintf(st->deflt.file, sizeof(st->deflt.file), "%s",
			 fc->file);
		st->deflt.line = fc->line;
		st->deflt_configured = true;
	}
}

/* port N: the default listener's port (deprecated in Mosquitto 2, still
 * honoured; given twice, the last one wins). */
static int opt_port(struct file_ctx *fc, const char *name, char *rest)
{
	long long port;
	if (get_int(fc, name, rest, 1, 65535, "a port number 1-65535",
		    &port) < 0)
		return -1;
	deflt_touch(fc);
	fc->st->deflt.port = (uint16_t)port;
	return 0;
}

/* bind_address ADDR: the default listener's address. Mosquitto also
 * resolves it here; kite leaves that to bind() so parsing stays pure. */
static int opt_bind_address(struct file_ctx *fc, const char *name, char *rest)
{
	struct load_state *st = fc->st;
	char *word;
	if (get_word(fc, name, rest, "an address", &word) < 0)
		return -1;
	if (st->deflt_host_set)
		return fail(fc, "option '%s': given more than once", name);
	if (check_utf8(fc, name, word) < 0 ||
	    copy_host(fc, name, word, st->deflt.bind_address) < 0)
		return -1;
	st->deflt_host_set = true;
	deflt_touch(fc);
	return 0;
}

/* max_connections N: for the current listener; negative = unlimited. */
static int opt_max_connections(struct file_ctx *fc, const char *name,
			       char *rest)
{
	long long n;
	if (get_int(fc, name, rest, INT32_MIN, INT32_MAX,
		    "a number (-1 for unlimited)", &n) < 0)
		return -1;
	fc->cur->max_connections = n < 0 ? -1 : (int)n;
	return 0;
}

/* ---- security ---------------------------------------------------------- */

/* allow_anonymous BOOL: global, or with per_listener_settings true for the
 * current listener (before any `listener`: the default listener). */
static int opt_allow_anonymous(struct file_ctx *fc, const char *name,
			       char *rest)
{
	struct load_state *st = fc->st;
	bool v;
	if (get_bool(fc, name, rest, &v) < 0)
		return -1;
	st->security_set = true;
	if (st->cfg->per_listener_settings)
		fc->cur->allow_anonymous = v;
	else
		st->cfg->allow_anonymous = v;
	return 0;
}

/* per_listener_settings BOOL: may be turned on only before any security
 * option, which would otherwise already have gone to the wrong scope. */
static int opt_per_listener_settings(struct file_ctx *fc, const char *name,
				     char *rest)
{
	bool v;
	if (get_bool(fc, name, rest, &v) < 0)
		return -1;
	fc->st->cfg->per_listener_settings = v;
	if (v && fc->st->security_set)
		return fail(fc, "option '%s': must be set before "
				"allow_anonymous and any other security option",
			    name);
	return 0;
}

/* ---- global limits ----------------------------------------------------- */

static int opt_max_keepalive(struct file_ctx *fc, const char *name, char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 10, 65535, "a number 10-65535", &n) < 0)
		return -1;
	fc->st->cfg->max_keepalive_s = (uint32_t)n;
	return 0;
}

static int opt_max_packet_size(struct file_ctx *fc, const char *name,
			       char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 20, INT32_MAX, "a number of bytes >= 20",
		    &n) < 0)
		return -1;
	fc->st->cfg->max_packet_size = (uint32_t)n;
	return 0;
}

static int opt_message_size_limit(struct file_ctx *fc, const char *name,
				  char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 0, MQTT_PAYLOAD_MAX,
		    "a number of bytes 0-268435455", &n) < 0)
		return -1;
	fc->st->cfg->message_size_limit = (uint32_t)n;
	return 0;
}

/* Mosquitto: negative or 65535 means no limit (0). */
static int opt_max_inflight_messages(struct file_ctx *fc, const char *name,
				     char *rest)
{
	long long n;
	if (get_int(fc, name, rest, INT32_MIN, 65535,
		    "a number up to 65535 (0 for no limit)", &n) < 0)
		return -1;
	fc->st->cfg->max_inflight_messages =
		(n < 0 || n == 65535) ? 0 : (uint32_t)n;
	return 0;
}

/* Mosquitto: negative means no limit (0). */
static int opt_max_queued_messages(struct file_ctx *fc, const char *name,
				   char *rest)
{
	long long n;
	if (get_int(fc, name, rest, INT32_MIN, INT32_MAX,
		    "a number (0 for no limit)", &n) < 0)
		return -1;
	fc->st->cfg->max_queued_messages = n < 0 ? 0 : (uint32_t)n;
	return 0;
}

/* Mosquitto: 0 (the default) or negative means no limit. */
static int opt_max_queued_bytes(struct file_ctx *fc, const char *name,
				char *rest)
{
	long long n;
	if (get_int(fc, name, rest, INT64_MIN, INT64_MAX,
		    "a number of bytes (0 for no limit)", &n) < 0)
		return -1;
	fc->st->cfg->max_queued_bytes = n < 0 ? 0 : (uint64_t)n;
	return 0;
}

static int opt_sys_interval(struct file_ctx *fc, const char *name, char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 0, 65535, "a number of seconds 0-65535",
		    &n) < 0)
		return -1;
	fc->st->cfg->sys_interval_s = (uint32_t)n;
	return 0;
}

static int opt_shards(struct file_ctx *fc, const char *name, char *rest)
{
	char expects[48];
	long long n;
	snprintf(expects, sizeof(expects), "a number 0-%d (0 = one per CPU)",
		 KITE_SHARDS_MAX);
	if (get_int(fc, name, rest, 0, KITE_SHARDS_MAX, expects, &n) < 0)
		return -1;
	fc->st->cfg->shards = (unsigned)n;
	return 0;
}

static int opt_retain_available(struct file_ctx *fc, const char *name,
				char *rest)
{
	return get_bool(fc, name, rest, &fc->st->cfg->retain_available);
}

static int opt_connection_messages(struct file_ctx *fc, const char *name,
				   char *rest)
{
	return get_bool(fc, name, rest, &fc->st->cfg->connection_messages);
}

static int opt_persistence(struct file_ctx *fc, const char *name, char *rest)
{
	return get_bool(fc, name, rest, &fc->st->cfg->persistence);
}

static int opt_persistence_location(struct file_ctx *fc, const char *name,
				    char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	return get_rest(fc, name, rest, "a directory", cfg->persistence_location,
			sizeof(cfg->persistence_location)) < 0 ||
			       check_utf8(fc, name, cfg->persistence_location) < 0
		       ? -1
		       : 0;
}

static int opt_persistence_file(struct file_ctx *fc, const char *name,
				char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	if (get_rest(fc, name, rest, "a file name", cfg->persistence_file,
		     sizeof(cfg->persistence_file)) < 0 ||
	    check_utf8(fc, name, cfg->persistence_file) < 0)
		return -1;
	return 0;
}

static int opt_autosave_interval(struct file_ctx *fc, const char *name,
				 char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 0, INT32_MAX, "a number of seconds (or "
		    "changes) >= 0", &n) < 0)
		return -1;
	fc->st->cfg->autosave_interval_s = (uint32_t)n;
	return 0;
}

static int opt_autosave_on_changes(struct file_ctx *fc, const char *name,
				   char *rest)
{
	return get_bool(fc, name, rest, &fc->st->cfg->autosave_on_changes);
}

/* Mosquitto's form: a number and one of h d w m y (30-day months). */
static int opt_persistent_client_expiration(struct file_ctx *fc,
					    const char *name, char *rest)
{
	static const char expects[] = "a duration such as 12h, 14d, 2w, 6m or 1y";
	char *word, *end;
	if (get_word(fc, name, rest, expects, &word) < 0)
		return -1;
	errno = 0;
	unsigned long long n = strtoull(word, &end, 10);
	uint64_t unit = 0;
	if (end != word && end[0] && !end[1]) {
		switch (end[0]) {
		case 'h': unit = 3600; break;
		case 'd': unit = 86400; break;
		case 'w': unit = 7 * 86400; break;
		case 'm': unit = 30 * 86400; break;
		case 'y': unit = 365 * 86400; break;
		}
	}
	if (!unit || errno || n == 0 || n > UINT32_MAX / unit)
		return fail(fc, "option '%s': expects %s, got '%s'", name,
			    expects, word);
	fc->st->cfg->persistent_client_expiration_s = (uint32_t)(n * unit);
	return 0;
}

static int opt_persistence_sync(struct file_ctx *fc, const char *name,
				char *rest)
{
	static const char expects[] = "always, never or a number of milliseconds";
	char *word;
	if (get_word(fc, name, rest, expects, &word) < 0)
		return -1;
	long long n;
	if (!strcmp(word, "always"))
		fc->st->cfg->persistence_sync_ms = KITE_PERSISTENCE_SYNC_ALWAYS;
	else if (!strcmp(word, "never"))
		fc->st->cfg->persistence_sync_ms = KITE_PERSISTENCE_SYNC_NEVER;
	else if (parse_ll(word, &n) && n >= 1 && n <= 3600000)
		fc->st->cfg->persistence_sync_ms = (uint32_t)n;
	else
		return fail(fc, "option '%s': expects %s (1-3600000), got '%s'",
			    name, expects, word);
	return 0;
}

static int opt_pid_file(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	if (fc->st->pid_file_set)
		return fail(fc, "option '%s': given more than once", name);
	if (get_rest(fc, name, rest, "a path", cfg->pid_file,
		     sizeof(cfg->pid_file)) < 0 ||
	    check_utf8(fc, name, cfg->pid_file) < 0)
		return -1;
	fc->st->pid_file_set = true;
	return 0;
}

/* ---- logging ----------------------------------------------------------- */

/* log_dest file PATH: the path is the rest of the line, as in Mosquitto. */
static int log_dest_file(struct file_ctx *fc, const char *name, char *path)
{
	struct kite_config *cfg = fc->st->cfg;
	if (cfg->log_file[0])
		return fail(fc, "option '%s': 'file' given more than once",
			    name);
	if (get_rest(fc, name, path, "a path after 'file'", cfg->log_file,
		     sizeof(cfg->log_file)) < 0)
		return -1;
	cfg->log_dest |= KITE_LOGDEST_FILE;
	return 0;
}

static int opt_log_dest(struct file_ctx *fc, const char *name, char *rest)
{
	static const char expects[] =
		"stdout, stderr, syslog, topic, file PATH or none";
	static const struct {
		const char *word;
		unsigned bit;
	} dests[] = {
		{"stdout", KITE_LOGDEST_STDOUT}, {"stderr", KITE_LOGDEST_STDERR},
		{"syslog", KITE_LOGDEST_SYSLOG}, {"topic", KITE_LOGDEST_TOPIC},
	};
	struct load_state *st = fc->st;
	char *word = skip_blanks(rest);
	char *after = word;
	while (*after && !is_blank(*after))
		after++;
	if (*after)
		*after++ = '\0';
	after = skip_blanks(after);

	if (!*word || *word == '#')
		return fail(fc, "option '%s': missing value (expects %s)",
			    name, expects);
	if (!st->log_dest_set) {
		st->cfg->log_dest = 0; /* the first line replaces stderr */
		st->log_dest_set = true;
	}
	if (!strcmp(word, "file"))
		return log_dest_file(fc, name, after);
	if (*after && *after != '#')
		return fail(fc, "option '%s': unexpected extra argument '%s'",
			    name, after);
	if (!strcmp(word, "none")) {
		st->cfg->log_dest = 0;
		return 0;
	}
	for (size_t i = 0; i < sizeof(dests) / sizeof(dests[0]); i++) {
		if (!strcmp(word, dests[i].word)) {
			st->cfg->log_dest |= dests[i].bit;
			return 0;
		}
	}
	if (!strcmp(word, "dlt"))
		return fail(fc, "option '%s': 'dlt' is not supported yet", name);
	return fail(fc, "option '%s': expects %s, got '%s'", name, expects,
		    word);
}

static int opt_log_type(struct file_ctx *fc, const char *name, char *rest)
{
	static const char expects[] =
		"error, warning, notice, information, debug, subscribe, "
		"unsubscribe, websockets, all or none";
	static const struct {
		const char *word;
		unsigned bit;
	} types[] = {
		{"error", KITE_LOG_ERR},
		{"warning", KITE_LOG_WARNING},
		{"notice", KITE_LOG_NOTICE},
		{"information", KITE_LOG_INFO},
		{"debug", KITE_LOG_DEBUG},
		{"subscribe", KITE_LOG_SUBSCRIBE},
		{"unsubscribe", KITE_LOG_UNSUBSCRIBE},
		{"websockets", KITE_LOG_WEBSOCKETS},
	};
	struct load_state *st = fc->st;
	char *word;
	if (get_word(fc, name, rest, expects, &word) < 0)
		return -1;
	if (!strcmp(word, "internal"))
		return fail(fc, "option '%s': 'internal' is not supported yet",
			    name);
	if (!st->log_type_set) {
		st->cfg->log_type = 0; /* the first line replaces the default */
		st->log_type_set = true;
	}
	if (!strcmp(word, "none")) {
		st->cfg->log_type = 0;
		return 0;
	}
	if (!strcmp(word, "all")) {
		st->cfg->log_type = KITE_LOG_ALL;
		return 0;
	}
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (!strcmp(word, types[i].word)) {
			st->cfg->log_type |= types[i].bit;
			return 0;
		}
	}
	return fail(fc, "option '%s': expects %s, got '%s'", name, expects,
		    word);
}

/* ---- files ------------------------------------------------------------- */

static int parse_file(struct load_state *st, const char *path, int level);

/* Opens a config file. Included files must be regular files (O_NONBLOCK
 * so a FIFO named *.conf cannot hang us); the main file may be a pipe,
 * e.g. `kite -c <(...)`. Returns the fd, or -1 with errno set. */
static int open_config(const char *path, int level)
{
	int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | (level ? O_NONBLOCK : 0);
	int fd = open(path, flags);
	if (fd < 0)
		return -1;
	struct stat sb;
	int e = fstat(fd, &sb) < 0		  ? errno
		: S_ISDIR(sb.st_mode)		  ? EISDIR
		: level && !S_ISREG(sb.st_mode) ? EINVAL
						  : 0;
	if (e) {
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Reads fd to EOF into a growing heap buffer, NUL-terminated. Returns the
 * length, or -1 with errno set (EFBIG for CONFIG_FILE_BYTES_MAX or more). */
static ssize_t read_all(int fd, char **out)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return -1;
	for (;;) {
		if (len == cap) {
			char *grown = cap < CONFIG_FILE_BYTES_MAX
					      ? realloc(buf, 2 * cap + 1)
					      : NULL;
			if (!grown) {
				free(buf);
				errno = cap < CONFIG_FILE_BYTES_MAX ? ENOMEM
								    : EFBIG;
				return -1;
			}
			buf = grown;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			free(buf);
			errno = e;
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	*out = buf;
	return (ssize_t)len;
}

/* Reads a whole config file into a NUL-terminated heap buffer. */
static int read_file(struct load_state *st, const char *path, int level,
		     char **out, size_t *outlen)
{
	int fd = open_config(path, level);
	if (fd < 0)
		return fail_file(st, path, errno);
	ssize_t len = read_all(fd, out);
	int e = errno;
	close(fd);
	if (len < 0)
		return fail_file(st, path, e);
	*outlen = (size_t)len;
	return 0;
}

/* Mosquitto's include_dir order (conf_includedir.c scmp_p): by name with
 * ASCII case folded, then case-sensitively as the tie-break. */
static int include_name_cmp(const void *pa, const void *pb)
{
	const unsigned char *a = *(const unsigned char *const *)pa;
	const unsigned char *b = *(const unsigned char *const *)pb;
	for (; *a && *b; a++, b++) {
		int ua = (*a >= 'a' && *a <= 'z') ? *a - 32 : *a;
		int ub = (*b >= 'a' && *b <= 'z') ? *b - 32 : *b;
		if (ua != ub)
			return ua - ub;
		if (*a != *b)
			return *a - *b;
	}
	return *a - *b;
}

static void free_names(char **names, size_t count)
{
	for (size_t i = 0; i < count; i++)
		free(names[i]);
	free(names);
}

/* Every "*.conf" in dir (a name longer than the suffix, as Mosquitto
 * requires), sorted. */
static int list_conf_files(struct file_ctx *fc, const char *name,
			   const char *dir, char ***out, size_t *count)
{
	DIR *dh = opendir(dir);
	if (!dh)
		return fail(fc, "option '%s': cannot open directory '%s': %s",
			    name, dir, strerror(errno));
	char **names = NULL;
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(dh)) != NULL) {
		size_t len = strlen(de->d_name);
		if (len <= 5 || strcmp(de->d_name + len - 5, ".conf") != 0)
			continue;
		if (n == CONFIG_INCLUDE_FILES_MAX) {
			closedir(dh);
			free_names(names, n);
			return fail(fc, "option '%s': more than %d .conf files "
					"in '%s'", name,
				    CONFIG_INCLUDE_FILES_MAX, dir);
		}
		char **grown = realloc(names, (n + 1) * sizeof(*names));
		char *copy = grown ? strdup(de->d_name) : NULL;
		if (!copy) {
			closedir(dh);
			free_names(grown ? grown : names, n);
			return fail(fc, "option '%s': out of memory", name);
		}
		names = grown;
		names[n++] = copy;
	}
	closedir(dh);
	if (n)
		qsort(names, n, sizeof(*names), include_name_cmp);
	*out = names;
	*count = n;
	return 0;
}

/* include_dir DIR: parses every DIR/\*.conf in order, as if inline. Like
 * Mosquitto 2.0, only the main file's include_dir lines are followed. */
static int opt_include_dir(struct file_ctx *fc, const char *name, char *rest)
{
	char dir[KITE_PATH_MAX];
	if (fc->level > 0)
		return 0;
	if (get_rest(fc, name, rest, "a directory", dir, sizeof(dir)) < 0)
		return -1;

	char **names = NULL;
	size_t count = 0;
	if (list_conf_files(fc, name, dir, &names, &count) < 0)
		return -1;
	size_t dirlen = strlen(dir);
	const char *sep = dir[dirlen - 1] == '/' ? "" : "/";
	int rc = 0;
	for (size_t i = 0; i < count && rc == 0; i++) {
		char path[KITE_PATH_MAX];
		int n = snprintf(path, sizeof(path), "%s%s%s", dir, sep,
				 names[i]);
		if (n < 0 || (size_t)n >= sizeof(path))
			rc = fail(fc, "option '%s': path '%s%s%s' too long",
				  name, dir, sep, names[i]);
		else
			rc = parse_file(fc->st, path, fc->level + 1);
	}
	free_names(names, count);
	return rc;
}

/* ---- dispatch ---------------------------------------------------------- */

/* ---- TLS (always listener options, as in Mosquitto) ------------------- */

static struct kite_tls_cfg *cur_tls(struct file_ctx *fc)
{
	return &fc->cur->tls;
}

#define TLS_PATH_OPT(field)                                                   \
	static int opt_##field(struct file_ctx *fc, const char *name,         \
			       char *rest)                                    \
	{                                                                     \
		struct kite_tls_cfg *t = cur_tls(fc);                         \
		if (get_rest(fc, name, rest, "a path", t->field,              \
			     sizeof(t->field)) < 0)                           \
			return -1;                                            \
		return check_utf8(fc, name, t->field);                        \
	}
TLS_PATH_OPT(cafile)
TLS_PATH_OPT(capath)
TLS_PATH_OPT(certfile)
TLS_PATH_OPT(keyfile)
TLS_PATH_OPT(crlfile)
TLS_PATH_OPT(dhparamfile)

static int opt_ciphers(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_tls_cfg *t = cur_tls(fc);
	return get_rest(fc, name, rest, "a cipher list", t->ciphers,
			sizeof(t->ciphers));
}

static int opt_ciphers_tls13(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_tls_cfg *t = cur_tls(fc);
	return get_rest(fc, name, rest, "a TLS 1.3 cipher suite list",
			t->ciphers_tls13, sizeof(t->ciphers_tls13));
}

static int opt_tls_version(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_tls_cfg *t = cur_tls(fc);
	char *word;
	if (get_word(fc, name, rest, "tlsv1.2 or tlsv1.3", &word) < 0)
		return -1;
	if (!strcmp(word, "tlsv1.1") || !strcmp(word, "tlsv1"))
		return fail(fc, "option '%s': '%s' is insecure; kite accepts "
				"tlsv1.2 or tlsv1.3", name, word);
	if (strcmp(word, "tlsv1.2") && strcmp(word, "tlsv1.3"))
		return fail(fc, "option '%s': expects tlsv1.2 or tlsv1.3, got "
				"'%s'", name, word);
	snprintf(t->tls_version, sizeof(t->tls_version), "%s", word);
	return 0;
}

static int opt_require_certificate(struct file_ctx *fc, const char *name,
				   char *rest)
{
	return get_bool(fc, name, rest, &cur_tls(fc)->require_certificate);
}

static int opt_use_identity_as_username(struct file_ctx *fc, const char *name,
					char *rest)
{
	return get_bool(fc, name, rest, &cur_tls(fc)->use_identity_as_username);
}

static int opt_use_subject_as_username(struct file_ctx *fc, const char *name,
				       char *rest)
{
	return get_bool(fc, name, rest, &cur_tls(fc)->use_subject_as_username);
}

/* ---- ACL and password files (scoped like allow_anonymous) ------------- */

static int security_path(struct file_ctx *fc, const char *name, char *rest,
			 char *global, char *listener)
{
	fc->st->security_set = true;
	char *dst = fc->st->cfg->per_listener_settings ? listener : global;
	if (get_rest(fc, name, rest, "a path", dst, KITE_PATH_MAX) < 0)
		return -1;
	return check_utf8(fc, name, dst);
}

static int opt_acl_file(struct file_ctx *fc, const char *name, char *rest)
{
	return security_path(fc, name, rest, fc->st->cfg->acl_file,
			     fc->cur->acl_file);
}

static int opt_password_file(struct file_ctx *fc, const char *name, char *rest)
{
	return security_path(fc, name, rest, fc->st->cfg->password_file,
			     fc->cur->password_file);
}

static int opt_max_qos(struct file_ctx *fc, const char *name, char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 0, 2, "a number 0-2", &n) < 0)
		return -1;
	fc->st->cfg->max_qos = (uint8_t)n;
	return 0;
}

static int opt_max_topic_alias(struct file_ctx *fc, const char *name,
			       char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 0, 65535, "a number 0-65535", &n) < 0)
		return -1;
	fc->st->cfg->max_topic_alias = (uint32_t)n;
	return 0;
}

/* ---- kite's flood filter ---------------------------------------------- */

static int opt_flood_filter_interface(struct file_ctx *fc, const char *name,
				      char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	char *word;
	if (get_word(fc, name, rest, "an interface name", &word) < 0)
		return -1;
	if (strlen(word) >= sizeof(cfg->flood_filter_ifaces[0]))
		return fail(fc, "option '%s': interface name too long", name);
	if (cfg->flood_filter_iface_count >= KITE_FLOOD_IFACES_MAX)
		return fail(fc, "option '%s': at most %d interfaces", name,
			    KITE_FLOOD_IFACES_MAX);
	snprintf(cfg->flood_filter_ifaces[cfg->flood_filter_iface_count++],
		 sizeof(cfg->flood_filter_ifaces[0]), "%s", word);
	return 0;
}

#define FLOOD_NUM_OPT(field, lo, hi)                                          \
	static int opt_##field(struct file_ctx *fc, const char *name,         \
			       char *rest)                                    \
	{                                                                     \
		long long n;                                                  \
		if (get_int(fc, name, rest, lo, hi, "a number " #lo "-" #hi,  \
			    &n) < 0)                                          \
			return -1;                                            \
		fc->st->cfg->field = (uint32_t)n;                             \
		return 0;                                                     \
	}
FLOOD_NUM_OPT(flood_filter_syn_rate, 1, 1000000)
FLOOD_NUM_OPT(flood_filter_syn_burst, 1, 1000000)
FLOOD_NUM_OPT(flood_filter_strikes, 1, 1000)
FLOOD_NUM_OPT(flood_filter_block_seconds, 1, 86400)

static int opt_flood_filter_required(struct file_ctx *fc, const char *name,
				     char *rest)
{
	return get_bool(fc, name, rest, &fc->st->cfg->flood_filter_required);
}

/* ---- the table ---------------------------------------------------------- */

static const struct option options[] = {
	{"acl_file", opt_acl_file},
	{"allow_anonymous", opt_allow_anonymous},
	{"cafile", opt_cafile},
	{"capath", opt_capath},
	{"certfile", opt_certfile},
	{"ciphers", opt_ciphers},
	{"ciphers_tls1.3", opt_ciphers_tls13},
	{"crlfile", opt_crlfile},
	{"dhparamfile", opt_dhparamfile},
	{"flood_filter_block_seconds", opt_flood_filter_block_seconds},
	{"flood_filter_interface", opt_flood_filter_interface},
	{"flood_filter_required", opt_flood_filter_required},
	{"flood_filter_strikes", opt_flood_filter_strikes},
	{"flood_filter_syn_burst", opt_flood_filter_syn_burst},
	{"flood_filter_syn_rate", opt_flood_filter_syn_rate},
	{"keyfile", opt_keyfile},
	{"max_qos", opt_max_qos},
	{"maximum_qos", opt_max_qos}, /* Mosquitto's other name for it */
	{"max_topic_alias", opt_max_topic_alias},
	{"password_file", opt_password_file},
	{"require_certificate", opt_require_certificate},
	{"tls_version", opt_tls_version},
	{"use_identity_as_username", opt_use_identity_as_username},
	{"use_subject_as_username", opt_use_subject_as_username},
	{"bind_address", opt_bind_address},
	{"connection_messages", opt_connection_messages},
	{"include_dir", opt_include_dir},
	{"listener", opt_listener},
	{"log_dest", opt_log_dest},
	{"log_type", opt_log_type},
	{"max_connections", opt_max_connections},
	{"max_inflight_messages", opt_max_inflight_messages},
	{"max_keepalive", opt_max_keepalive},
	{"max_packet_size", opt_max_packet_size},
	{"max_queued_messages", opt_max_queued_messages},
	{"max_queued_bytes", opt_max_queued_bytes},
	{"message_size_limit", opt_message_size_limit},
	{"per_listener_settings", opt_per_listener_settings},
	{"pid_file", opt_pid_file},
	{"autosave_interval", opt_autosave_interval},
	{"autosave_on_changes", opt_autosave_on_changes},
	{"persistence", opt_persistence},
	{"persistence_file", opt_persistence_file},
	{"persistence_location", opt_persistence_location},
	{"persistence_sync", opt_persistence_sync},
	{"persistent_client_expiration", opt_persistent_client_expiration},
	{"port", opt_port},
	{"retain_available", opt_retain_available},
	{"shards", opt_shards}, /* kite's own */
	{"sys_interval", opt_sys_interval},
};

/* Every other option Mosquitto 2.0.11 accepts (checked against the Debian
 * 12 binary: each of these is recognised, any other name is "Unknown
 * configuration variable"), plus the auth_opt_* / plugin_opt_* prefixes. */
static const char *const mosquitto_only_options[] = {
	"address", "addresses", "allow_duplicate_messages",
	"allow_zero_length_clientid", "auth_plugin",
	"auth_plugin_deny_special_chars", "auto_id_prefix",
	"bind_interface", "bridge_alpn",
	"bridge_attempt_unsubscribe", "bridge_bind_address", "bridge_cafile",
	"bridge_capath", "bridge_certfile", "bridge_identity",
	"bridge_insecure", "bridge_keyfile", "bridge_max_packet_size",
	"bridge_outgoing_retain", "bridge_protocol_version", "bridge_psk",
	"bridge_require_ocsp", "bridge_tls_version", "check_retain_source", "cleansession", "clientid", "clientid_prefixes", "connection",
	"http_dir", "idle_timeout",
	"keepalive_interval", "local_cleansession",
	"local_clientid", "local_password", "local_username", "log_facility",
	"log_timestamp", "log_timestamp_format", "max_inflight_bytes",

	"memory_limit", "mount_point", "notification_topic", "notifications",
	"notifications_local_only", "password",
	"plugin", "protocol", "psk_file",
	"psk_hint", "queue_qos0_messages", "remote_clientid",
	"remote_password", "remote_username", "restart_timeout", "retained_persistence", "retry_interval",
	"round_robin", "set_tcp_nodelay", "socket_domain", "start_type",
	"threshold", "tls_engine", "tls_engine_kpass_sha1", "tls_keyform",
	"topic", "try_private", "upgrade_outgoing_qos",
	"use_username_as_clientid", "user", "username",
	"websockets_headers_size", "websockets_log_level",
};

static bool mosquitto_knows(const char *name)
{
	if (!strncmp(name, "auth_opt_", 9) || !strncmp(name, "plugin_opt_", 11))
		return true;
	for (size_t i = 0; i < sizeof(mosquitto_only_options) /
				       sizeof(mosquitto_only_options[0]);
	     i++) {
		if (!strcmp(name, mosquitto_only_options[i]))
			return true;
	}
	return false;
}

static int dispatch(struct file_ctx *fc, const char *name, char *rest)
{
	for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
		if (!strcmp(name, options[i].name))
			return options[i].fn(fc, name, rest);
	}
	if (mosquitto_knows(name))
		return fail(fc, "option '%s' is not supported yet", name);
	return fail(fc, "unknown option '%s'", name);
}

/* One line, NUL-terminated, trailing blanks already cut. */
static int parse_line(struct file_ctx *fc, char *line)
{
	char *name = skip_blanks(line);
	if (*name == '\0' || *name == '#')
		return 0;
	char *p = name;
	while (*p && !is_blank(*p))
		p++;
	if (*p)
		*p++ = '\0';
	return dispatch(fc, name, skip_blanks(p));
}

/* Parses buf[0..len) (writable, buf[len] == '\0') line by line. */
static int parse_text(struct file_ctx *fc, char *buf, size_t len)
{
	char *end = buf + len;
	for (char *line = buf; line < end;) {
		char *nl = memchr(line, '\n', (size_t)(end - line));
		char *eol = nl ? nl : end;
		fc->line++;
		if (memchr(line, '\0', (size_t)(eol - line)))
			return fail(fc, "NUL byte in line");
		while (eol > line && is_space(eol[-1]))
			eol--;
		*eol = '\0';
		if (parse_line(fc, line) < 0)
			return -1;
		line = nl ? nl + 1 : end;
	}
	return 0;
}

static int parse_buffer(struct load_state *st, const char *file, int level,
			char *buf, size_t len)
{
	struct file_ctx fc = {
		.st = st, .file = file, .line = 0, .level = level,
		.cur = &st->deflt,
	};
	return parse_text(&fc, buf, len);
}

static int parse_file(struct load_state *st, const char *path, int level)
{
	char *buf;
	size_t len;
	if (read_file(st, path, level, &buf, &len) < 0)
		return -1;
	int rc = parse_buffer(st, path, level, buf, len);
	free(buf);
	return rc;
}

/* ---- entry points ------------------------------------------------------ */

static void load_state_init(struct load_state *st, struct kite_config *cfg,
			    char *err, size_t errlen)
{
	memset(st, 0, sizeof(*st));
	st->cfg = cfg;
	st->err = err;
	st->errlen = errlen;
	listener_init(&st->deflt, 0, "", 0);
}

/* After a successful parse: the default listener becomes a real one if
 * port or bind_address asked for it, after the explicit listeners (where
 * Mosquitto's config__parse_args puts it). */
static int load_finish(struct load_state *st)
{
	struct kite_config *cfg = st->cfg;
	if (!st->deflt_configured)
		return 0;
	if (cfg->listener_count >= KITE_LISTENERS_MAX) {
		struct file_ctx fc = {.st = st, .file = st->deflt.file,
				      .line = st->deflt.line};
		return fail(&fc, "too many listeners (at most %d)",
			    KITE_LISTENERS_MAX);
	}
	if (st->deflt.port == 0)
		st->deflt.port = CONFIG_DEFAULT_PORT;
	cfg->listeners[cfg->listener_count++] = st->deflt;
	return 0;
}

void config_defaults(struct kite_config *cfg)
{
	assert(cfg);
	memset(cfg, 0, sizeof(*cfg));
	cfg->allow_anonymous = -1;
	cfg->max_keepalive_s = 65535;
	cfg->max_inflight_messages = 20;
	cfg->max_queued_messages = 1000;
	cfg->retain_available = true;
	cfg->connection_messages = true;
	cfg->sys_interval_s = 10;
	cfg->log_dest = KITE_LOGDEST_STDERR;
	cfg->log_type = LOG_TYPES_DEFAULT;
	cfg->max_topic_alias = 10;
	cfg->max_qos = 2;
	cfg->flood_filter_syn_rate = 20;
	cfg->flood_filter_syn_burst = 40;
	cfg->flood_filter_strikes = 5;
	cfg->flood_filter_block_seconds = 60;
	snprintf(cfg->persistence_file, sizeof(cfg->persistence_file),
		 "mosquitto.db");
	cfg->autosave_interval_s = 1800;
	cfg->persistence_sync_ms = 1000;
}

int config_load(struct kite_config *cfg, const char *path, char *err,
		size_t errlen)
{
	assert(cfg && path && err && errlen > 0);
	err[0] = '\0';
	size_t len = strlen(path);
	if (len >= sizeof(cfg->path)) {
		snprintf(err, errlen, "%s: %s", path, strerror(ENAMETOOLONG));
		return -1;
	}
	memcpy(cfg->path, path, len + 1);

	struct load_state st;
	load_state_init(&st, cfg, err, errlen);
	if (parse_file(&st, path, 0) < 0)
		return -1;
	return load_finish(&st);
}

int config_load_string(struct kite_config *cfg, const char *name,
		       const char *text, char *err, size_t errlen)
{
	assert(cfg && name && text && err && errlen > 0);
	err[0] = '\0';
	struct load_state st;
	load_state_init(&st, cfg, err, errlen);
	size_t len = strlen(text);
	if (len >= CONFIG_FILE_BYTES_MAX)
		return fail_file(&st, name, EFBIG);
	char *buf = malloc(len + 1);
	if (!buf)
		return fail_file(&st, name, ENOMEM);
	memcpy(buf, text, len + 1);
	int rc = parse_buffer(&st, name, 0, buf, len);
	free(buf);
	return rc < 0 ? -1 : load_finish(&st);
}

/* Two listeners on the same port and the same (literal) address cannot
 * both bind: report the later one, naming the earlier. */
static int check_duplicates(const struct kite_config *cfg, char *err,
			    size_t errlen)
{
	for (unsigned j = 1; j < cfg->listener_count; j++) {
		const struct kite_listener_cfg *b = &cfg->listeners[j];
		for (unsigned i = 0; i < j; i++) {
			const struct kite_listener_cfg *a = &cfg->listeners[i];
			if (a->port != b->port ||
			    strcmp(a->bind_address, b->bind_address) != 0)
				continue;
			snprintf(err, errlen,
				 "%s:%d: listener on port %u (%s) duplicates "
				 "the one at %s:%d",
				 b->file, b->line, (unsigned)b->port,
				 listener_addr(b), a->file, a->line);
			return -1;
		}
	}
	return 0;
}

/* TLS options that cannot work together, reported at the listener. */
static int check_tls(const struct kite_listener_cfg *l, char *err,
		     size_t errlen)
{
	const struct kite_tls_cfg *t = &l->tls;
	const char *why = NULL;
	if (t->certfile[0] && !t->keyfile[0])
		why = "certfile without keyfile";
	else if (t->keyfile[0] && !t->certfile[0])
		why = "keyfile without certfile";
	else if (!t->certfile[0] && (t->require_certificate || t->cafile[0] ||
				     t->capath[0] || t->crlfile[0]))
		why = "TLS options without certfile and keyfile";
	else if (t->require_certificate && !t->cafile[0] && !t->capath[0])
		why = "require_certificate true needs cafile or capath";
	/* use_identity_as_username without require_certificate is accepted,
	 * as by Mosquitto: no certificate is asked for, so every client is
	 * refused (CONNACK 4, bad username or password). */
	if (!why)
		return 0;
	snprintf(err, errlen, "%s:%d: listener on port %u: %s", l->file,
		 l->line, (unsigned)l->port, why);
	return -1;
}

int config_finalize(struct kite_config *cfg, char *err, size_t errlen)
{
	assert(cfg && err && errlen > 0);
	assert(cfg->listener_count <= KITE_LISTENERS_MAX);
	err[0] = '\0';
	if (cfg->local_only)
		return 0; /* already finalized */

	if (cfg->listener_count == 0) {
		/* Mosquitto 2 local-only mode (listeners__start_local_only):
		 * anonymous access, whatever allow_anonymous said. Mosquitto
		 * also listens on ::1; kite's local listener is IPv4 only. */
		struct kite_listener_cfg *l = &cfg->listeners[0];
		listener_init(l, CONFIG_DEFAULT_PORT, "", 0);
		memcpy(l->bind_address, CONFIG_LOCAL_ADDRESS,
		       sizeof(CONFIG_LOCAL_ADDRESS));
		l->allow_anonymous = 1;
		cfg->allow_anonymous = 1;
		cfg->listener_count = 1;
		cfg->local_only = true;
		return 0;
	}

	/* Mosquitto 2 denies anonymous clients unless told otherwise
	 * (config__read, "allow_anonymous not explicitly set"). */
	if (!cfg->per_listener_settings && cfg->allow_anonymous < 0)
		cfg->allow_anonymous = 0;
	for (unsigned i = 0; i < cfg->listener_count; i++) {
		struct kite_listener_cfg *l = &cfg->listeners[i];
		if (!cfg->per_listener_settings) {
			l->allow_anonymous = cfg->allow_anonymous;
			memcpy(l->acl_file, cfg->acl_file, sizeof(l->acl_file));
			memcpy(l->password_file, cfg->password_file,
			       sizeof(l->password_file));
		} else if (l->allow_anonymous < 0) {
			l->allow_anonymous = 0;
		}
		if (check_tls(l, err, errlen) < 0)
			return -1;
	}
	return check_duplicates(cfg, err, errlen);
}

unsigned config_shard_count(const struct kite_config *cfg)
{
	assert(cfg && cfg->shards <= KITE_SHARDS_MAX);
	if (cfg->shards)
		return cfg->shards;
	/* The CPUs this process may run on (taskset, cgroup cpusets), which
	 * is what a shard per core means. */
	cpu_set_t set;
	long cpus = sched_getaffinity(0, sizeof(set), &set) == 0
			    ? CPU_COUNT(&set)
			    : sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1)
		return 1;
	return cpus > KITE_SHARDS_MAX ? KITE_SHARDS_MAX : (unsigned)cpus;
}
