/* An intrusive chained hash table: client ids, usernames, ACL identities,
 * session ids. An entry embeds a struct htab_link; the table allocates
 * only its bucket array (a power of two, doubled and rehashed from the
 * stored hashes once entries outnumber buckets, never shrunk), nothing
 * per entry or per lookup.
 *
 * The caller passes each key's hash: hash_bytes() (core/hash.h), keyed,
 * because these keys come from the network; hashing before taking a lock
 * keeps long keys out of the critical section. Entries are compared by
 * the full 64-bit hash first, then by the caller's eq callback.
 *
 * A zeroed struct htab is an empty table. Not thread-safe: the owner
 * serialises writers; const calls may run concurrently with each other. */
#ifndef KITE_HTAB_H
#define KITE_HTAB_H

#include "core/hash.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct htab_link {
	struct htab_link *next;
	uint64_t hash;
};

struct htab {
	struct htab_link **bucket; /* NULL until the first insert */
	size_t mask;		   /* buckets - 1 */
	size_t count;
};

/* True when the entry holding l has the key (key, len). */
typedef bool (*htab_eq_cb)(const struct htab_link *l, const void *key,
			   size_t len);

/* The entry of `type` whose `member` is the link l; NULL for NULL. */
#define htab_entry(l, type, member)                                          \
	((l) ? (type *)(void *)((char *)(l) - offsetof(type, member)) : (type *)NULL)

/* The entry with this hash for which eq says yes, or NULL. */
struct htab_link *htab_find(const struct htab *t, uint64_t hash,
			    const void *key, size_t len, htab_eq_cb eq);

/* Adds l under hash; its key must be absent. Returns 0, or -1 when out of
 * memory (nothing changed). */
int htab_insert(struct htab *t, struct htab_link *l, uint64_t hash);

/* At least n buckets now (a table about to take about n entries skips
 * the doublings and their rehashing, a cache miss per entry each). 0, or
 * -1 when out of memory (nothing changed). */
int htab_reserve(struct htab *t, size_t n);

/* Unlinks l, which must be in t. */
void htab_remove(struct htab *t, struct htab_link *l);

/* Frees the buckets, handing every entry still linked to free_cb (NULL:
 * the table must be empty). t is empty afterwards. */
void htab_fini(struct htab *t, void (*free_cb)(struct htab_link *l));

#endif
