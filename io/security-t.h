/* Types of the security snapshot (io/security.c). */
#ifndef KITE_IO_SECURITY_T_H
#define KITE_IO_SECURITY_T_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"

struct acl_cache;
struct passwd_db;
struct tls_server;

/* Password and ACL files per listener (security.c); one snapshot per
 * config generation, shared read-only by all shards. */
struct security {
	uint32_t gen;
	unsigned count;
	struct acl_cache *acl[KITE_LISTENERS_MAX];
	struct passwd_db *pw[KITE_LISTENERS_MAX];
	struct tls_server *tls[KITE_LISTENERS_MAX]; /* NULL: plain TCP */
	bool acl_shared[KITE_LISTENERS_MAX]; /* owned by an earlier listener */
	bool pw_shared[KITE_LISTENERS_MAX];
};

/* What XK_RELOAD hands a shard. */
struct snapshot {
	struct kite_config *cfg;
	struct security *sec;
	uint32_t reload; /* the reload_started it answers */
};

#endif
