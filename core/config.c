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
#include "core/codec.h"
#include <stddef.h>

#include <assert.h>
#include <sched.h>
#include <dirent.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
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
	bool bridge; /* inside a `connection` block */
};

typedef int (*option_fn)(struct file_ctx *fc, const char *name, char *rest);

/* How a table row's value is read (options with a handler of their own
 * are in options[] and bridge_options[]). */
enum opt_type {
	OPT_BOOL = 1, /* true/false/1/0 into a bool, or into an int (a
			 tri-state whose default is -1) */
	OPT_UINT,     /* lo..hi into an unsigned field of 1, 4 or 8 bytes */
	OPT_INT,      /* lo..hi into an int */
	OPT_STR,      /* the rest of the line into char[size]: paths may
			 hold blanks and '#', as in Mosquitto */
	OPT_WORD,     /* one word into char[size] */
	OPT_ENUM,     /* one of .words, its value into a field of 1 or 4
			 bytes; .expects lists them */
};

/* Where its value lives. */
enum opt_scope {
	OPT_GLOBAL = 0, /* struct kite_config */
	OPT_LISTENER,	/* the current struct kite_listener_cfg */
	OPT_SECURITY,	/* struct kite_listener_sec: global, or the current
			   listener's with per_listener_settings true */
	OPT_BRIDGE,	/* the current struct kite_bridge_cfg: only inside a
			   `connection` block */
};

/* Mosquitto reads a negative number as "no limit": 0 for OPT_UINT, -1 for
 * OPT_INT. */
#define OPT_NEG_OFF 1u
/* OPT_STR and OPT_WORD: bytes handed on as they are (cipher lists for
 * OpenSSL, a strftime format), not checked as UTF-8. */
#define OPT_ANY_BYTES 2u

struct option {
	const char *name;
	option_fn fn;
};

/* A word an OPT_ENUM row takes, and what it stores. */
struct opt_word {
	const char *word;
	int value;
};

/* An option parsed by its type alone (issue 15's table): a new simple
 * option is one row in typed_options[], no handler. */
struct typed_option {
	const char *name;
	const char *expects; /* NULL: "a number LO-HI", or "a value" */
	uint8_t type, scope, flags;
	uint16_t size;
	size_t off;
	long long lo, hi;
	const struct opt_word *words; /* OPT_ENUM: up to a NULL word */
};

/* Table rows: name, field (a member of the scope's struct), then the type
 * with its range, and optionally .expects and .flags. */
#define FIELD_SIZE(type, field) ((uint16_t)sizeof(((type *)0)->field))
#define OPT_ROW(nm, sc, st, field, ...)                                      \
	{.name = nm, .scope = sc, .size = FIELD_SIZE(st, field),              \
	 .off = offsetof(st, field), __VA_ARGS__}
#define OPT_G(nm, field, ...)                                                 \
	OPT_ROW(nm, OPT_GLOBAL, struct kite_config, field, __VA_ARGS__)
#define OPT_L(nm, field, ...)                                                 \
	OPT_ROW(nm, OPT_LISTENER, struct kite_listener_cfg, field, __VA_ARGS__)
#define OPT_S(nm, field, ...)                                                 \
	OPT_ROW(nm, OPT_SECURITY, struct kite_listener_sec, field, __VA_ARGS__)
#define OPT_B(nm, field, ...)                                                 \
	OPT_ROW(nm, OPT_BRIDGE, struct kite_bridge_cfg, field, __VA_ARGS__)
#define T_BOOL .type = OPT_BOOL
#define T_UINT(l, h) .type = OPT_UINT, .lo = (l), .hi = (h)
#define T_INT(l, h) .type = OPT_INT, .lo = (l), .hi = (h)
#define T_STR .type = OPT_STR
#define T_WORD .type = OPT_WORD
#define T_ENUM(...)                                                           \
	.type = OPT_ENUM,                                                     \
	.words = (const struct opt_word[]){__VA_ARGS__, {NULL, 0}}
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

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

/* Keeps "FILE:LINE: message" for the log (the parser has none of its
 * own); beyond KITE_CONFIG_WARNINGS_MAX the rest are dropped. */
__attribute__((format(printf, 2, 3))) static void warn(struct file_ctx *fc,
						       const char *fmt, ...)
{
	struct kite_config *cfg = fc->st->cfg;
	if (cfg->warning_count >= KITE_CONFIG_WARNINGS_MAX)
		return;
	char *w = cfg->warnings[cfg->warning_count++];
	int n = snprintf(w, KITE_CONFIG_ERR_MAX, "%s:%d: ", fc->file, fc->line);
	if (n >= 0 && n < KITE_CONFIG_ERR_MAX) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(w + n, KITE_CONFIG_ERR_MAX - (size_t)n, fmt, ap);
		va_end(ap);
	}
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

static void sec_defaults(struct kite_listener_sec *sec)
{
	sec->allow_zero_length_clientid = true;
	snprintf(sec->auto_id_prefix, sizeof(sec->auto_id_prefix), "auto-");
}

static void listener_init(struct kite_listener_cfg *l, uint16_t port,
			  const char *file, int line)
{
	memset(l, 0, sizeof(*l));
	l->port = port;
	l->max_connections = -1;
	l->allow_anonymous = -1;
	sec_defaults(&l->sec);
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

/* A libwebsockets log mask in Mosquitto (lws_log_levels): kite logs its
 * WebSocket events under the same bits (io/wsconn.c), with log_type
 * websockets as Mosquitto wants. Bits beyond lws's are ignored, as lws
 * does. */
static int opt_websockets_log_level(struct file_ctx *fc, const char *name,
				    char *rest)
{
	long long n;
	if (get_int(fc, name, rest, INT32_MIN, INT32_MAX, "an integer",
		    &n) < 0)
		return -1;
	fc->st->cfg->websockets_log_level = (int)n;
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

/* ---- limits and persistence -------------------------------------------- */

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

static int opt_log_format(struct file_ctx *fc, const char *name, char *rest)
{
	static const char *const words[] = {
		[KITE_LOG_FORMAT_MOSQUITTO] = "mosquitto",
		[KITE_LOG_FORMAT_JSON] = "json",
		[KITE_LOG_FORMAT_JOURNAL] = "journal",
	};
	char *word;
	if (get_word(fc, name, rest, "mosquitto, json or journal", &word) < 0)
		return -1;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		if (!strcmp(word, words[i])) {
			fc->st->cfg->log_format = (enum kite_log_format)i;
			fc->st->cfg->log_format_set = true;
			return 0;
		}
	}
	return fail(fc, "option '%s': expects mosquitto, json or journal, "
		    "got '%s'", name, word);
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

/* ---- TLS (always listener options, as in Mosquitto) ------------------- */

static int opt_tls_version(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_tls_cfg *t = &fc->cur->tls;
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

/* ---- typed options (the table's rows without a handler) --------------- */

static void *option_field(struct file_ctx *fc, const struct typed_option *o)
{
	struct load_state *st = fc->st;
	switch (o->scope) {
	case OPT_LISTENER:
		return (char *)fc->cur + o->off;
	case OPT_SECURITY:
		st->security_set = true;
		return (char *)(st->cfg->per_listener_settings ? &fc->cur->sec
							       : &st->cfg->sec) +
		       o->off;
	case OPT_BRIDGE:
		return (char *)&st->cfg->bridges[st->cfg->bridge_count - 1] +
		       o->off;
	default:
		return (char *)st->cfg + o->off;
	}
}

static int typed_bool(struct file_ctx *fc, const struct typed_option *o,
		      char *rest, void *dst)
{
	bool v;
	assert(o->size == sizeof(int) || o->size == sizeof(bool));
	if (get_bool(fc, o->name, rest, &v) < 0)
		return -1;
	if (o->size == sizeof(int))
		*(int *)dst = v;
	else
		*(bool *)dst = v;
	return 0;
}

static int typed_number(struct file_ctx *fc, const struct typed_option *o,
			char *rest, void *dst)
{
	char buf[64];
	const char *expects = o->expects;
	long long n;
	assert(o->type == OPT_INT ? o->size == sizeof(int)
				  : o->size == 1 || o->size == 4 || o->size == 8);
	if (!expects) {
		snprintf(buf, sizeof(buf), "a number %lld-%lld", o->lo, o->hi);
		expects = buf;
	}
	if (get_int(fc, o->name, rest, o->lo, o->hi, expects, &n) < 0)
		return -1;
	if ((o->flags & OPT_NEG_OFF) && n < 0)
		n = o->type == OPT_INT ? -1 : 0;
	if (o->type == OPT_INT)
		*(int *)dst = (int)n;
	else if (o->size == sizeof(uint64_t))
		*(uint64_t *)dst = (uint64_t)n;
	else if (o->size == sizeof(uint32_t))
		*(uint32_t *)dst = (uint32_t)n;
	else
		*(uint8_t *)dst = (uint8_t)n;
	return 0;
}

static int typed_string(struct file_ctx *fc, const struct typed_option *o,
			char *rest, char *dst)
{
	const char *expects = o->expects ? o->expects : "a value";
	bool utf8 = !(o->flags & OPT_ANY_BYTES);
	char *word;
	if (o->type == OPT_STR) {
		if (get_rest(fc, o->name, rest, expects, dst, o->size) < 0)
			return -1;
		return utf8 ? check_utf8(fc, o->name, dst) : 0;
	}
	if (get_word(fc, o->name, rest, expects, &word) < 0 ||
	    (utf8 && check_utf8(fc, o->name, word) < 0))
		return -1;
	if (strlen(word) >= o->size)
		return fail(fc, "option '%s': value longer than %u bytes",
			    o->name, o->size - 1u);
	memcpy(dst, word, strlen(word) + 1);
	return 0;
}

static int typed_enum(struct file_ctx *fc, const struct typed_option *o,
		      char *rest, void *dst)
{
	char *word;
	assert(o->expects && (o->size == sizeof(int) || o->size == 1));
	if (get_word(fc, o->name, rest, o->expects, &word) < 0)
		return -1;
	for (const struct opt_word *w = o->words; w->word; w++) {
		if (strcmp(word, w->word))
			continue;
		if (o->size == sizeof(int))
			*(int *)dst = w->value;
		else
			*(uint8_t *)dst = (uint8_t)w->value;
		return 0;
	}
	return fail(fc, "option '%s': expects %s, got '%s'", o->name,
		    o->expects, word);
}

static int opt_typed(struct file_ctx *fc, const struct typed_option *o,
		     char *rest)
{
	if (o->scope == OPT_BRIDGE && !fc->bridge)
		return fail(fc, "option '%s' is only valid in a bridge "
				"('connection') block", o->name);
	void *dst = option_field(fc, o);
	switch (o->type) {
	case OPT_BOOL:
		return typed_bool(fc, o, rest, dst);
	case OPT_UINT:
	case OPT_INT:
		return typed_number(fc, o, rest, dst);
	case OPT_STR:
	case OPT_WORD:
		return typed_string(fc, o, rest, dst);
	case OPT_ENUM:
		return typed_enum(fc, o, rest, dst);
	}
	return fail(fc, "option '%s': bad table entry", o->name);
}

/* mount_point PREFIX: a topic prefix, so no wildcard (Mosquitto checks it
 * as a publish topic). */
static int opt_mount_point(struct file_ctx *fc, const char *name, char *rest)
{
	char *word;
	if (get_word(fc, name, rest, "a topic prefix", &word) < 0 ||
	    check_utf8(fc, name, word) < 0)
		return -1;
	if (strpbrk(word, "+#"))
		return fail(fc, "option '%s': '%s' contains a wildcard (+ or #)",
			    name, word);
	if (strlen(word) >= sizeof(fc->cur->mount_point))
		return fail(fc, "option '%s': longer than %zu bytes", name,
			    sizeof(fc->cur->mount_point) - 1);
	snprintf(fc->cur->mount_point, sizeof(fc->cur->mount_point), "%s", word);
	return 0;
}

static int opt_user(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	char *word;
	if (get_word(fc, name, rest, "a user name", &word) < 0)
		return -1;
	if (strlen(word) >= sizeof(cfg->user))
		return fail(fc, "option '%s': longer than %zu bytes", name,
			    sizeof(cfg->user) - 1);
	snprintf(cfg->user, sizeof(cfg->user), "%s", word);
	cfg->user_set = true;
	return 0;
}

static int opt_allow_duplicate_messages(struct file_ctx *fc, const char *name,
					char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	if (get_bool(fc, name, rest, &cfg->allow_duplicate_messages) < 0)
		return -1;
	if (cfg->allow_duplicate_messages)
		warn(fc, "option '%s' is deprecated (Mosquitto 2.0); kite "
			 "always sends a message once to a client whose "
			 "subscriptions overlap (MQTT 3.3.5)", name);
	return 0;
}

/* Kept by Mosquitto 2.0 for old configs, which it warns about too. */
static int opt_retry_interval(struct file_ctx *fc, const char *name,
			      char *rest)
{
	long long n;
	if (get_int(fc, name, rest, 0, INT32_MAX, "a number of seconds", &n) <
	    0)
		return -1;
	warn(fc, "option '%s' is no longer available (Mosquitto 2.0 ignores it "
		 "too): QoS 1/2 messages are resent on reconnection only, as "
		 "MQTT 5 requires", name);
	return 0;
}

/* OpenSSL 3 deprecates engines, and kite's OpenSSL loads none: the key
 * comes from keyfile (a PEM file, or a provider URI in a future kite). */
static int opt_tls_engine(struct file_ctx *fc, const char *name, char *rest)
{
	char *word;
	if (get_word(fc, name, rest, "a value", &word) < 0)
		return -1;
	warn(fc, "option '%s' is obsolete with OpenSSL 3 (engines are "
		 "deprecated) and ignored: give the private key as a PEM "
		 "keyfile", name);
	return 0;
}

static int opt_tls_keyform(struct file_ctx *fc, const char *name, char *rest)
{
	char *word;
	if (get_word(fc, name, rest, "pem or engine", &word) < 0)
		return -1;
	if (!strcmp(word, "pem"))
		return 0;
	if (!strcmp(word, "engine"))
		return fail(fc, "option '%s': 'engine' keys need an OpenSSL "
				"engine, obsolete with OpenSSL 3 and not loaded "
				"by kite: use a PEM keyfile", name);
	return fail(fc, "option '%s': expects pem or engine, got '%s'", name,
		    word);
}

/* kite cannot load Mosquitto's plugin ABI: refusing to start is safer
 * than running without the checks the plugin would have made. */
static int opt_plugin(struct file_ctx *fc, const char *name, char *rest)
{
	char *word;
	if (get_word(fc, name, rest, "a plugin path", &word) < 0)
		return -1;
	return fail(fc, "option '%s %s': kite cannot load Mosquitto plugins; "
			"use password_file, acl_file and psk_file instead",
		    name, word);
}

/* ---- bridges: `connection NAME` and the options of its block ------------
 *
 * Mosquitto 2.0.11's names. A bridge option outside a connection block
 * is an error, as in Mosquitto; other options keep their global meaning
 * inside one. */

static struct kite_bridge_cfg *cur_bridge(struct file_ctx *fc)
{
	struct kite_config *cfg = fc->st->cfg;
	return fc->bridge ? &cfg->bridges[cfg->bridge_count - 1] : NULL;
}

static int opt_connection(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_config *cfg = fc->st->cfg;
	char *word;
	if (get_word(fc, name, rest, "a bridge name", &word) < 0)
		return -1;
	if (cfg->bridge_count >= KITE_BRIDGES_MAX)
		return fail(fc, "option '%s': too many bridges (at most %d)",
			    name, KITE_BRIDGES_MAX);
	for (unsigned i = 0; i < cfg->bridge_count; i++)
		if (!strcmp(cfg->bridges[i].name, word))
			return fail(fc, "option '%s': duplicate bridge name '%s'",
				    name, word);
	struct kite_bridge_cfg *b = &cfg->bridges[cfg->bridge_count];
	memset(b, 0, sizeof(*b));
	if (strlen(word) >= sizeof(b->name))
		return fail(fc, "option '%s': name too long", name);
	strcpy(b->name, word);
	b->local_cleansession = -1;
	b->notifications = true;
	b->keepalive_s = 60;
	b->restart_base_s = 5;
	b->restart_cap_s = 30;
	b->try_private = true;
	b->protocol = 4;
	b->outgoing_retain = true;
	b->attempt_unsubscribe = true;
	b->idle_timeout_s = 60;
	b->threshold = 10;
	snprintf(b->file, sizeof(b->file), "%s", fc->file);
	b->line = fc->line;
	cfg->bridge_count++;
	fc->bridge = true;
	return 0;
}

static int bopt_address(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_bridge_cfg *b = cur_bridge(fc);
	char *argv[KITE_BRIDGE_ADDRS_MAX + 1];
	int argc = split_args(rest, argv, KITE_BRIDGE_ADDRS_MAX);
	if (argc == 0)
		return fail(fc, "option '%s': missing value (expects host[:port])",
			    name);
	for (int i = 0; i < argc; i++) {
		if (b->addr_count >= KITE_BRIDGE_ADDRS_MAX)
			return fail(fc, "option '%s': too many addresses (at most %d)",
				    name, KITE_BRIDGE_ADDRS_MAX);
		struct kite_bridge_addr *a = &b->addrs[b->addr_count];
		char *host = argv[i];
		long long port = 1883;
		char *colon = strrchr(host, ':');
		/* An IPv6 address needs its port (man mosquitto.conf). */
		if (colon && (strchr(host, ':') == colon || host[0] == '[')) {
			*colon = '\0';
			if (!parse_ll(colon + 1, &port) || port < 1 || port > 65535)
				return fail(fc, "option '%s': bad port '%s'", name,
					    colon + 1);
		}
		if (host[0] == '[') {
			host++;
			size_t n = strlen(host);
			if (n && host[n - 1] == ']')
				host[n - 1] = '\0';
		}
		if (!*host)
			return fail(fc, "option '%s': empty host", name);
		if (copy_host(fc, name, host, a->host) < 0)
			return -1;
		a->port = (uint16_t)port;
		b->addr_count++;
	}
	return 0;
}

/* Mosquitto's `""` is the empty prefix. */
static const char *bridge_prefix(const char *w)
{
	return strcmp(w, "\"\"") ? w : "";
}

static int bopt_topic(struct file_ctx *fc, const char *name, char *rest)
{
	struct kite_bridge_cfg *b = cur_bridge(fc);
	char *argv[6];
	/* Not split_args: `topic # in` is a pattern, not a comment. */
	int argc = 0;
	for (char *p = skip_blanks(rest); *p && argc < 6;) {
		argv[argc++] = p;
		while (*p && !is_blank(*p))
			p++;
		if (*p)
			*p++ = '\0';
		p = skip_blanks(p);
	}
	if (argc == 0 || argc > 5)
		return fail(fc, "option '%s': expects pattern [in|out|both "
				"[qos [local-prefix remote-prefix]]]", name);
	if (argc == 4)
		return fail(fc, "option '%s': a local prefix needs a remote "
				"prefix (use \"\" for none)", name);
	if (b->topic_count >= KITE_BRIDGE_TOPICS_MAX)
		return fail(fc, "option '%s': too many topics (at most %d)",
			    name, KITE_BRIDGE_TOPICS_MAX);
	struct kite_bridge_topic *t = &b->topics[b->topic_count];
	memset(t, 0, sizeof(*t));
	const char *pattern = bridge_prefix(argv[0]);
	t->dir = BRIDGE_OUT;
	if (argc >= 2) {
		if (!strcmp(argv[1], "out"))
			t->dir = BRIDGE_OUT;
		else if (!strcmp(argv[1], "in"))
			t->dir = BRIDGE_IN;
		else if (!strcmp(argv[1], "both"))
			t->dir = BRIDGE_BOTH;
		else
			return fail(fc, "option '%s': direction must be in, out "
					"or both, got '%s'", name, argv[1]);
	}
	if (argc >= 3) {
		if (strlen(argv[2]) != 1 || argv[2][0] < '0' || argv[2][0] > '2')
			return fail(fc, "option '%s': QoS must be 0, 1 or 2, got "
					"'%s'", name, argv[2]);
		t->qos = (uint8_t)(argv[2][0] - '0');
	}
	const char *lp = argc == 5 ? bridge_prefix(argv[3]) : "";
	const char *rp = argc == 5 ? bridge_prefix(argv[4]) : "";
	if (strlen(pattern) >= KITE_BRIDGE_TOPIC_MAX ||
	    strlen(lp) >= KITE_BRIDGE_PREFIX_MAX ||
	    strlen(rp) >= KITE_BRIDGE_PREFIX_MAX)
		return fail(fc, "option '%s': pattern or prefix too long", name);
	if (!*pattern && (!*lp || !*rp))
		return fail(fc, "option '%s': an empty pattern needs both a "
				"local and a remote prefix", name);
	if (strchr(lp, '+') || strchr(lp, '#') || strchr(rp, '+') ||
	    strchr(rp, '#'))
		return fail(fc, "option '%s': prefixes cannot hold wildcards",
			    name);
	strcpy(t->local_prefix, lp);
	strcpy(t->remote_prefix, rp);
	snprintf(t->local_topic, sizeof(t->local_topic), "%s%s", lp, pattern);
	snprintf(t->remote_topic, sizeof(t->remote_topic), "%s%s", rp, pattern);
	if (!mqtt_topic_filter_valid((const uint8_t *)t->local_topic,
				     strlen(t->local_topic)) ||
	    !mqtt_topic_filter_valid((const uint8_t *)t->remote_topic,
				     strlen(t->remote_topic)) ||
	    !strncmp(t->local_topic, "$share/", 7))
		return fail(fc, "option '%s': invalid topic pattern '%s'", name,
			    argv[0]);
	b->topic_count++;
	return 0;
}

static int bopt_tls_version(struct file_ctx *fc, const char *name, char *rest)
{
	char *word;
	if (get_word(fc, name, rest, "tlsv1.2 or tlsv1.3", &word) < 0)
		return -1;
	if (strcmp(word, "tlsv1.2") && strcmp(word, "tlsv1.3"))
		return fail(fc, "option '%s': expects tlsv1.2 or tlsv1.3, got "
				"'%s' (older versions are refused)", name, word);
	strcpy(cur_bridge(fc)->tls_version, word);
	return 0;
}

static int bopt_restart_timeout(struct file_ctx *fc, const char *name,
				char *rest)
{
	struct kite_bridge_cfg *b = cur_bridge(fc);
	char *argv[3];
	int argc = split_args(rest, argv, 2);
	long long base, cap = 0;
	if (argc < 1 || argc > 2 || !parse_ll(argv[0], &base) || base < 1 ||
	    base > 86400 ||
	    (argc == 2 && (!parse_ll(argv[1], &cap) || cap < base || cap > 86400)))
		return fail(fc, "option '%s': expects seconds, or a base and a "
				"cap (base <= cap), 1-86400", name);
	b->restart_base_s = (uint32_t)base;
	b->restart_cap_s = (uint32_t)cap;
	return 0;
}

static const struct option bridge_options[] = {
	{"address", bopt_address},
	{"addresses", bopt_address},
	{"bridge_tls_version", bopt_tls_version},
	{"restart_timeout", bopt_restart_timeout},
	{"topic", bopt_topic},
};

/* 1: not a bridge option; else the option's result. */
static int bridge_dispatch(struct file_ctx *fc, const char *name, char *rest)
{
	if (!strcmp(name, "connection"))
		return opt_connection(fc, name, rest);
	for (size_t i = 0; i < sizeof(bridge_options) / sizeof(bridge_options[0]);
	     i++) {
		if (strcmp(name, bridge_options[i].name))
			continue;
		if (!fc->bridge)
			return fail(fc, "option '%s' is only valid in a bridge "
					"('connection') block", name);
		return bridge_options[i].fn(fc, name, rest);
	}
	return 1;
}

static bool hex_key_ok(const char *s)
{
	size_t n = strlen(s);
	if (!n || n % 2)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isxdigit((unsigned char)s[i]))
			return false;
	return true;
}

/* What the whole block must say, checked when the file is done. */
static int bridges_finalize(struct kite_config *cfg, char *err, size_t errlen)
{
	char host[128] = "kite";
	gethostname(host, sizeof(host) - 1);
	for (unsigned i = 0; i < cfg->bridge_count; i++) {
		struct kite_bridge_cfg *b = &cfg->bridges[i];
		const char *why = NULL;
		/* password and remote_password fill it; a value is never
		 * empty */
		b->remote_password_set = b->remote_password[0] != '\0';
		if (!b->addr_count)
			why = "has no address";
		else if (!b->topic_count)
			why = "has no topic";
		else if (b->remote_password_set && !b->remote_username[0])
			why = "has a remote_password without a remote_username";
		else if ((b->certfile[0] != 0) != (b->keyfile[0] != 0))
			why = "needs both bridge_certfile and bridge_keyfile";
		else if ((b->psk_identity[0] != 0) != (b->psk[0] != 0))
			why = "needs both bridge_identity and bridge_psk";
		else if (b->psk[0] && !hex_key_ok(b->psk))
			why = "has a bridge_psk that is not an even number of "
			      "hexadecimal digits (without 0x)";
		else if (b->psk[0] && (b->certfile[0] || b->cafile[0] ||
				       b->capath[0]))
			why = "uses certificates and PSK: only one of them can "
			      "be used on one bridge (as in Mosquitto)";
		else if (b->require_ocsp && !b->cafile[0] && !b->capath[0])
			why = "has bridge_require_ocsp without certificate TLS "
			      "(bridge_cafile or bridge_capath)";
		else if ((b->certfile[0] || b->tls_version[0] || b->insecure) &&
			 !b->cafile[0] && !b->capath[0] && !b->psk[0])
			why = "needs bridge_cafile or bridge_capath for TLS "
			      "(or bridge_identity and bridge_psk)";
		if (why) {
			snprintf(err, errlen, "%s:%d: bridge '%s' %s", b->file,
				 b->line, b->name, why);
			return -1;
		}
		/* Built from a copy: the fields share *cfg, and gcc's
		 * -Wrestrict cannot tell they do not overlap. */
		char rid[sizeof(b->remote_clientid)];
		if (!b->remote_clientid[0]) {
			snprintf(rid, sizeof(rid), "%.120s.%.120s", host,
				 b->name);
			memcpy(b->remote_clientid, rid, sizeof(rid));
		}
		memcpy(rid, b->remote_clientid, sizeof(rid));
		if (!b->local_clientid[0])
			snprintf(b->local_clientid, sizeof(b->local_clientid),
				 "local.%.240s", rid);
		if (!b->notification_topic[0])
			snprintf(b->notification_topic,
				 sizeof(b->notification_topic),
				 "$SYS/broker/connection/%.200s/state", rid);
		if (b->local_cleansession < 0)
			b->local_cleansession = b->cleansession;
	}
	return 0;
}

/* ---- the tables and dispatch ------------------------------------------- */

/* Options with a handler of their own: a value of its own form, or
 * state beyond one field. */
static const struct option options[] = {
	{"acl_file", opt_acl_file},
	{"allow_anonymous", opt_allow_anonymous},
	{"flood_filter_interface", opt_flood_filter_interface},
	{"websockets_log_level", opt_websockets_log_level},
	{"password_file", opt_password_file},
	{"tls_version", opt_tls_version},
	{"bind_address", opt_bind_address},
	{"include_dir", opt_include_dir},
	{"listener", opt_listener},
	{"log_dest", opt_log_dest},
	{"log_format", opt_log_format}, /* kite's own */
	{"log_type", opt_log_type},
	{"max_inflight_messages", opt_max_inflight_messages},
	{"per_listener_settings", opt_per_listener_settings},
	{"pid_file", opt_pid_file},
	{"persistence_sync", opt_persistence_sync},
	{"persistent_client_expiration", opt_persistent_client_expiration},
	{"port", opt_port},
	{"allow_duplicate_messages", opt_allow_duplicate_messages},
	{"auth_plugin", opt_plugin},
	{"mount_point", opt_mount_point},
	{"plugin", opt_plugin},
	{"retry_interval", opt_retry_interval},
	{"tls_engine", opt_tls_engine},
	{"tls_engine_kpass_sha1", opt_tls_engine},
	{"tls_keyform", opt_tls_keyform},
	{"user", opt_user},
};

/* Every option of one shape: name, field, type and range, and what the
 * error says the option expects when the range alone does not. */
static const struct typed_option typed_options[] = {
	/* general */
	OPT_G("autosave_interval", autosave_interval_s, T_UINT(0, INT32_MAX),
	      .expects = "a number of seconds (or changes) >= 0"),
	OPT_G("autosave_on_changes", autosave_on_changes, T_BOOL),
	OPT_G("check_retain_source", check_retain_source, T_BOOL),
	OPT_G("clientid_prefixes", clientid_prefixes, T_WORD),
	/* kite's own: the cluster (docs/CLUSTER.md). */
	OPT_G("cluster_nats_url", cluster_nats_url, T_WORD),
	OPT_G("cluster_node_name", cluster_node_name, T_WORD),
	OPT_G("connection_messages", connection_messages, T_BOOL),
	/* kite's own: the XDP flood filter. */
	OPT_G("flood_filter_block_seconds", flood_filter_block_seconds,
	      T_UINT(1, 86400)),
	OPT_G("flood_filter_required", flood_filter_required, T_BOOL),
	OPT_G("flood_filter_strikes", flood_filter_strikes, T_UINT(1, 1000)),
	OPT_G("flood_filter_syn_burst", flood_filter_syn_burst,
	      T_UINT(1, 1000000)),
	OPT_G("flood_filter_syn_rate", flood_filter_syn_rate,
	      T_UINT(1, 1000000)),
	OPT_G("log_facility", log_facility, T_INT(0, 7),
	      .expects = "a number 0-7 (local0-local7)"),
	OPT_G("log_timestamp", log_timestamp, T_BOOL),
	OPT_G("log_timestamp_format", log_timestamp_format, T_STR,
	      .expects = "a strftime format", .flags = OPT_ANY_BYTES),
	OPT_G("max_inflight_bytes", max_inflight_bytes, T_UINT(0, UINT32_MAX)),
	OPT_G("max_keepalive", max_keepalive_s, T_UINT(10, 65535)),
	OPT_G("max_packet_size", max_packet_size, T_UINT(20, INT32_MAX),
	      .expects = "a number of bytes >= 20"),
	OPT_G("max_qos", max_qos, T_UINT(0, 2)),
	OPT_G("maximum_qos", max_qos, T_UINT(0, 2)), /* Mosquitto's alias */
	OPT_G("max_queued_bytes", max_queued_bytes,
	      T_UINT(INT64_MIN, INT64_MAX), .flags = OPT_NEG_OFF,
	      .expects = "a number of bytes (0 for no limit)"),
	OPT_G("max_queued_messages", max_queued_messages,
	      T_UINT(INT32_MIN, INT32_MAX), .flags = OPT_NEG_OFF,
	      .expects = "a number (0 for no limit)"),
	OPT_G("max_topic_alias", max_topic_alias, T_UINT(0, 65535)),
	OPT_G("memory_limit", memory_limit, T_UINT(0, INT64_MAX)),
	OPT_G("message_size_limit", message_size_limit,
	      T_UINT(0, MQTT_PAYLOAD_MAX),
	      .expects = "a number of bytes 0-268435455"),
	OPT_G("persistence", persistence, T_BOOL),
	OPT_G("persistence_file", persistence_file, T_STR,
	      .expects = "a file name"),
	OPT_G("persistence_location", persistence_location, T_STR,
	      .expects = "a directory"),
	OPT_G("pin_shards", pin_shards, T_BOOL), /* kite's own */
	OPT_G("queue_qos0_messages", queue_qos0_messages, T_BOOL),
	OPT_G("retain_available", retain_available, T_BOOL),
	OPT_G("set_tcp_nodelay", set_tcp_nodelay, T_BOOL),
	OPT_G("shards", shards, T_UINT(0, KITE_SHARDS_MAX), /* kite's own */
	      .expects = "a number 0-" STRINGIFY(KITE_SHARDS_MAX)
			 " (0 = one per CPU)"),
	OPT_G("sys_interval", sys_interval_s, T_UINT(0, 65535),
	      .expects = "a number of seconds 0-65535"),
	OPT_G("upgrade_outgoing_qos", upgrade_outgoing_qos, T_BOOL),
	OPT_G("websockets_headers_size", websockets_headers_size,
	      T_UINT(0, KITE_WS_HEADERS_SIZE_MAX),
	      .expects = "a number of bytes (0 for the default)"),

	/* security: global, or per listener with per_listener_settings */
	OPT_S("allow_zero_length_clientid", allow_zero_length_clientid,
	      T_BOOL),
	OPT_S("auto_id_prefix", auto_id_prefix, T_STR),
	OPT_S("psk_file", psk_file, T_STR),

	/* the current listener; TLS is always per listener, as in
	 * Mosquitto */
	OPT_L("bind_interface", bind_interface, T_WORD),
	OPT_L("enable_proxy_protocol", proxy_protocol, T_UINT(1, 2)),
	OPT_L("cafile", tls.cafile, T_STR, .expects = "a path"),
	OPT_L("capath", tls.capath, T_STR, .expects = "a path"),
	OPT_L("certfile", tls.certfile, T_STR, .expects = "a path"),
	OPT_L("ciphers", tls.ciphers, T_STR, .expects = "a cipher list",
	      .flags = OPT_ANY_BYTES),
	OPT_L("ciphers_tls1.3", tls.ciphers_tls13, T_STR,
	      .expects = "a TLS 1.3 cipher suite list", .flags = OPT_ANY_BYTES),
	OPT_L("crlfile", tls.crlfile, T_STR, .expects = "a path"),
	OPT_L("dhparamfile", tls.dhparamfile, T_STR, .expects = "a path"),
	OPT_L("http_dir", http_dir, T_STR, .expects = "a directory"),
	OPT_L("keyfile", tls.keyfile, T_STR, .expects = "a path"),
	OPT_L("max_connections", max_connections,
	      T_INT(INT32_MIN, INT32_MAX), .flags = OPT_NEG_OFF,
	      .expects = "a number (-1 for unlimited)"),
	OPT_L("protocol", protocol,
	      T_ENUM({"mqtt", LISTENER_PROTO_MQTT},
		     {"websockets", LISTENER_PROTO_WEBSOCKETS},
		     {"metrics", LISTENER_PROTO_METRICS}), /* kite's own */
	      .expects = "mqtt, websockets or metrics"),
	OPT_L("psk_hint", psk_hint, T_STR),
	OPT_L("require_certificate", tls.require_certificate, T_BOOL),
	OPT_L("socket_domain", socket_domain,
	      T_ENUM({"ipv4", KITE_DOMAIN_IPV4}, {"ipv6", KITE_DOMAIN_IPV6}),
	      .expects = "ipv4 or ipv6"),
	OPT_L("use_identity_as_username", tls.use_identity_as_username,
	      T_BOOL),
	OPT_L("use_subject_as_username", tls.use_subject_as_username, T_BOOL),
	OPT_L("use_username_as_clientid", use_username_as_clientid, T_BOOL),

	/* the current bridge (`connection NAME` block) */
	OPT_B("bridge_alpn", alpn, T_WORD),
	OPT_B("bridge_attempt_unsubscribe", attempt_unsubscribe, T_BOOL),
	OPT_B("bridge_bind_address", bind_address, T_WORD),
	OPT_B("bridge_cafile", cafile, T_STR, .expects = "a path",
	      .flags = OPT_ANY_BYTES),
	OPT_B("bridge_capath", capath, T_STR, .expects = "a path",
	      .flags = OPT_ANY_BYTES),
	OPT_B("bridge_certfile", certfile, T_STR, .expects = "a path",
	      .flags = OPT_ANY_BYTES),
	OPT_B("bridge_identity", psk_identity, T_WORD),
	OPT_B("bridge_insecure", insecure, T_BOOL),
	OPT_B("bridge_keyfile", keyfile, T_STR, .expects = "a path",
	      .flags = OPT_ANY_BYTES),
	OPT_B("bridge_max_packet_size", max_packet_size,
	      T_UINT(0, MQTT_VARINT_MAX + 5ll), .expects = "a size in bytes"),
	OPT_B("bridge_outgoing_retain", outgoing_retain, T_BOOL),
	OPT_B("bridge_psk", psk, T_WORD,
	      .expects = "a key in hexadecimal, without 0x"),
	OPT_B("bridge_require_ocsp", require_ocsp, T_BOOL),
	OPT_B("bridge_protocol_version", protocol,
	      T_ENUM({"mqttv31", 3}, {"mqttv311", 4}, {"mqttv50", 5}),
	      .expects = "mqttv31, mqttv311 or mqttv50"),
	OPT_B("cleansession", cleansession, T_BOOL),
	OPT_B("clientid", remote_clientid, T_WORD),
	OPT_B("idle_timeout", idle_timeout_s, T_UINT(1, UINT32_MAX),
	      .expects = "seconds"),
	OPT_B("keepalive_interval", keepalive_s, T_UINT(5, 65535),
	      .expects = "5-65535 seconds"),
	OPT_B("local_cleansession", local_cleansession, T_BOOL),
	OPT_B("local_clientid", local_clientid, T_WORD),
	OPT_B("local_password", local_password, T_WORD),
	OPT_B("local_username", local_username, T_WORD),
	OPT_B("notification_topic", notification_topic, T_WORD),
	OPT_B("notifications", notifications, T_BOOL),
	OPT_B("notifications_local_only", notifications_local_only, T_BOOL),
	OPT_B("password", remote_password, T_WORD),
	OPT_B("remote_clientid", remote_clientid, T_WORD),
	OPT_B("remote_password", remote_password, T_WORD),
	OPT_B("remote_username", remote_username, T_WORD),
	OPT_B("round_robin", round_robin, T_BOOL),
	OPT_B("start_type", start_type,
	      T_ENUM({"automatic", 0}, {"lazy", 1}, {"once", 2}),
	      .expects = "automatic, lazy or once"),
	OPT_B("threshold", threshold, T_UINT(1, UINT32_MAX),
	      .expects = "a count"),
	OPT_B("try_private", try_private, T_BOOL),
	OPT_B("username", remote_username, T_WORD),
};

/* Every other option Mosquitto 2.0.11 accepts (checked against the Debian
 * 12 binary: each of these is recognised, any other name is "Unknown
 * configuration variable"). */
static const char *const mosquitto_only_options[] = {
	"retained_persistence",
};

static bool in_list(const char *name, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(name, list[i]))
			return true;
	return false;
}

#define IN_LIST(name, list) in_list(name, list, sizeof(list) / sizeof(list[0]))

static int dispatch(struct file_ctx *fc, const char *name, char *rest)
{
	int brc = bridge_dispatch(fc, name, rest);
	if (brc <= 0)
		return brc;
	for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
		if (!strcmp(name, options[i].name))
			return options[i].fn(fc, name, rest);
	}
	for (size_t i = 0; i < sizeof(typed_options) / sizeof(typed_options[0]);
	     i++) {
		if (!strcmp(name, typed_options[i].name))
			return opt_typed(fc, &typed_options[i], rest);
	}
	if (!strncmp(name, "auth_opt_", 9) || !strncmp(name, "plugin_opt_", 11) ||
	    !strcmp(name, "auth_plugin_deny_special_chars"))
		return fail(fc, "option '%s' configures a Mosquitto plugin, which "
				"kite cannot load; use password_file, acl_file "
				"and psk_file instead", name);
	if (!strncmp(name, "bridge_", 7))
		return fail(fc, "unknown option '%s' (not a bridge option of "
				"Mosquitto 2.0's)", name);
	if (IN_LIST(name, mosquitto_only_options))
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
	cfg->log_facility = -1;
	cfg->log_timestamp = true;
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
	sec_defaults(&cfg->sec);
	snprintf(cfg->user, sizeof(cfg->user), "mosquitto");
	cfg->set_tcp_nodelay = true;
	cfg->check_retain_source = true;
	cfg->allow_duplicate_messages = true;
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
	else if (l->psk_hint[0] && !l->sec.psk_file[0])
		why = "psk_hint needs a psk_file";
	if (!why && t->certfile[0] && l->protocol == LISTENER_PROTO_METRICS)
		why = "TLS on a metrics listener is not supported yet";
	if (!why && l->proxy_protocol && l->protocol == LISTENER_PROTO_METRICS)
		why = "enable_proxy_protocol on a metrics listener is not "
		      "supported";
	if (!why && l->http_dir[0] && l->protocol != LISTENER_PROTO_WEBSOCKETS)
		why = "http_dir needs protocol websockets (only a WebSockets "
		      "listener serves files)";
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
	if (bridges_finalize(cfg, err, errlen) < 0)
		return -1;

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
			l->sec = cfg->sec;
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
