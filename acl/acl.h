/* Access control: Mosquitto 2.0 ACL files and password files.
 *
 * Standalone: no engine, io_uring or config dependency. Bytes and paths in,
 * decisions out. Thread model: struct acl_rules, struct acl_identity and
 * struct passwd_db are immutable once built and may be read from any thread;
 * struct acl_cache serialises acl_cache_get() with a mutex (CONNECT only).
 *
 * ACL file syntax (Mosquitto's acl_file):
 *   # comment                      (only when '#' is the first byte)
 *   topic [read|write|readwrite|deny] FILTER
 *   user NAME
 *   pattern [read|write|readwrite|deny] FILTER
 * The access keyword is optional (readwrite). FILTER is the rest of the line
 * and may contain spaces. `topic` lines before the first `user` line belong
 * to anonymous clients (no username), later ones to the preceding `user`.
 * `pattern` lines apply to every client wherever they stand, with %u the
 * username and %c the client id. A repeated `user NAME` block continues the
 * earlier one. Once an ACL file is set, access is denied by default.
 *
 * Decision (Mosquitto 2.0 mosquitto_acl_check_default, phase by phase):
 *   1. the client's own topic rules (its user block, or the anonymous block):
 *      a matching deny -> DENIED; else a matching grant with the access bit
 *      -> ALLOWED; else go on;
 *   2. the patterns, same way (deny first); else DENIED.
 * So a user-block grant wins over a pattern deny, exactly as in Mosquitto.
 * A topic starting with '$' is only matched by a rule starting with '$'.
 * ACL_SUBSCRIBE is always allowed, as Mosquitto 2.0 does ("FIXME - implement
 * ACL subscription strings"): reads are checked at delivery. kite adds the
 * stricter acl_filter_may_match() for SUBSCRIBE.
 *
 * Differences from Mosquitto 2.0.11 (all deliberate, none widens access):
 *  - %u and %c are also substituted in `topic` lines inside a `user` block
 *    (`user Device123` + `topic readwrite /device/%u/#` grants
 *    /device/Device123/#). Mosquitto keeps them literal. Anonymous-block
 *    topic lines stay literal.
 *  - Dangerous identities: like Mosquitto 2.0, a username or client id that
 *    contains '+' or '#' disables every pattern. In addition, a rule that
 *    substitutes %u (or %c) is dropped when the username (client id) contains
 *    '/', which would let "a/b" reach into the tree of user "a".
 *  - Syntax errors, unknown access keywords, invalid filters and NUL bytes
 *    fail the load with "FILE:LINE: reason" (Mosquitto logs without a line).
 */
#ifndef KITE_ACL_H
#define KITE_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bounds: an ACL/password file line, a filter or name (MQTT's 65535), the
 * whole file read by acl_load/passwd_load, and the rules of one identity. */
#define ACL_LINE_MAX (65535 + 1024)
#define ACL_STRING_MAX 65535
#define ACL_FILE_MAX (512u << 20)
#define ACL_IDENTITY_RULES_MAX 65536

struct acl_rules;    /* an immutable compiled ACL file, refcounted */
struct acl_cache;    /* (username, client id) -> struct acl_identity */
struct acl_identity; /* one identity's compiled rules, refcounted */

enum acl_access {
	ACL_READ = 1,	   /* delivery of a PUBLISH to this client */
	ACL_WRITE = 2,	   /* a PUBLISH from this client */
	ACL_SUBSCRIBE = 4, /* always allowed (Mosquitto 2.0) */
};

/* Parse an ACL file. NULL on error with "FILE:LINE: reason" (or
 * "FILE: reason") in err. The result holds one reference. */
struct acl_rules *acl_load(const char *path, char *err, size_t errlen);
/* Same from a NUL-terminated text; name is used in error messages. */
struct acl_rules *acl_load_string(const char *name, const char *text,
				  char *err, size_t errlen);
void acl_rules_ref(struct acl_rules *rules);
void acl_rules_unref(struct acl_rules *rules);

/* A cache of compiled identities over one acl_rules (takes its own
 * reference). A reload builds a new cache and drops the old one: identities
 * already handed out keep the old cache and rules alive until unreffed.
 * NULL when out of memory. */
struct acl_cache *acl_cache_new(struct acl_rules *rules);
void acl_cache_unref(struct acl_cache *cache);

/* The compiled rules of (username, client_id); username NULL = anonymous.
 * Thread-safe (mutex: call at CONNECT, not per message). Returns a new
 * reference, or NULL when out of memory.
 *
 * Sharing: the cache key is (username, client id) only when the identity's
 * rules substitute %c; otherwise all client ids of a username share one
 * identity (keyed by username plus "client id disables patterns", i.e. it
 * contains '+' or '#' or is NULL). An identity leaves the cache when its
 * last reference goes, so random client ids cannot grow it without bound. */
struct acl_identity *acl_cache_get(struct acl_cache *cache,
				   const char *username, const char *client_id);
void acl_identity_ref(struct acl_identity *id);
void acl_identity_unref(struct acl_identity *id);

/* Hot path: no lock, no allocation, cost independent of the number of users
 * in the file. topic is a PUBLISH topic name (not NUL-terminated); an empty
 * topic or one holding '+', '#' or NUL matches no rule. access is one of
 * enum acl_access (several bits: any of them suffices, as in Mosquitto). */
bool acl_check(const struct acl_identity *id, const char *topic, size_t len,
	       enum acl_access access);

/* SUBSCRIBE (kite, stricter than Mosquitto): false when no read grant of
 * this identity can match any topic the filter matches, so the engine can
 * refuse it (reason code 0x87). A "$share/NAME/" prefix is skipped. Deny
 * rules are ignored here (conservative: true may still deliver nothing;
 * delivery is checked with ACL_READ anyway). filter must be valid. */
bool acl_filter_may_match(const struct acl_identity *id, const char *filter,
			  size_t len);

/* Whether acl_check(ACL_READ) allows every topic the subscription
 * filter matches, so delivery can skip it (decided once at SUBSCRIBE).
 * Conservative: false when unsure (a deny rule that might match, a grant
 * covering only part of the filter). filter must be valid, not shared. */
bool acl_filter_fully_readable(const struct acl_identity *id,
			       const char *filter, size_t len);

/* Number of rules the identity kept (tests and stats). */
size_t acl_identity_rule_count(const struct acl_identity *id);

/* ---- Password files (mosquitto_passwd formats) ----
 * Lines "user:$6$SALT$HASH" (SHA-512 of password||salt) and
 * "user:$7$ITERATIONS$SALT$HASH" (PBKDF2-HMAC-SHA512), base64, 12-byte
 * salt, 64-byte hash. '#' lines and blank lines are skipped. Unlike
 * Mosquitto (which logs and drops bad entries), a malformed line, an
 * unknown hash type or a duplicate user fails the load: "FILE:LINE: reason". */
struct passwd_db;

#define PASSWD_SALT_LEN 12
#define PASSWD_HASH_LEN 64
#define PASSWD_ITERATIONS_DEFAULT 101
#define PASSWD_ITERATIONS_MAX 10000000

enum passwd_result {
	PASSWD_OK,
	PASSWD_BAD_PASSWORD,
	PASSWD_NO_SUCH_USER,
};

struct passwd_db *passwd_load(const char *path, char *err, size_t errlen);
struct passwd_db *passwd_load_string(const char *name, const char *text,
				     char *err, size_t errlen);
void passwd_free(struct passwd_db *db);
size_t passwd_count(const struct passwd_db *db);

/* Constant-time comparison. password may hold any bytes (MQTT binary data);
 * NULL means "no password field" and always fails. An unknown user costs a
 * hash as well, so timing does not reveal which users exist. Thread-safe;
 * costs one PBKDF2 (about 0.1 ms at 101 iterations): call at CONNECT. */
enum passwd_result passwd_check(const struct passwd_db *db,
				const char *username, const uint8_t *password,
				size_t len);

/* `kite passwd [-H sha512|sha512-pbkdf2] [-I ITER] [-c] [-b] [-D] [-U]
 * FILE [USER [PASSWORD]]`: mosquitto_passwd's options. Writes $7$ (101
 * iterations) by default, files mode 0600, atomically (temp file + rename).
 * -U hashes plain-text lines and keeps lines already hashed ($6$/$7$)
 * (mosquitto_passwd would hash the hash). Returns the exit status. */
int passwd_main(int argc, char **argv);

#endif
