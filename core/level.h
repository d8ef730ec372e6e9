/* Topic levels, shared by the three level trees (trie.c, gtrie.c,
 * retain.c): cutting a topic or filter into levels, the keyed level hash,
 * and the RCU-published child table of gtrie.c and retain.c.
 *
 * Internal to core/: the hash is keyed by a per-structure random seed, so
 * it is only meaningful against the structure that chose the seed. */
#ifndef KITE_LEVEL_H
#define KITE_LEVEL_H

#include "core/trie.h" /* TRIE_LEVELS_MAX */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
/* Inline rcu_dereference/rcu_assign_pointer (liburcu's knob for its
 * under-10-line functions in non-LGPL code); otherwise every pointer load on
 * the read path is a call into the library. */
#ifndef URCU_INLINE_SMALL_FUNCTIONS
#define URCU_INLINE_SMALL_FUNCTIONS
#endif
#include <urcu/urcu-qsbr.h>

/* Smallest child table (slots); tables are powers of two, at most 3/4
 * full. */
#define LEVEL_CAP_MIN 4u

/* A topic cut into levels, each hashed once up front: a walk may look the
 * same level up under several nodes (literal and '+' paths). */
struct levels {
	uint32_t n;
	bool truncated; /* the topic has more than TRIE_LEVELS_MAX levels */
	uint32_t off[TRIE_LEVELS_MAX];
	uint32_t len[TRIE_LEVELS_MAX];
	uint64_t h[TRIE_LEVELS_MAX];
};

/* A hash seed per structure: the keyed hash (core/hash.h) of salt, the
 * structure's address, so seeds are random and independent of each other. */
uint64_t level_seed(const void *salt);

/* Keyed hash of one level. The per-structure seed keeps clients from
 * choosing names that collide in one table. level_split computes the same
 * value while it scans for '/'.
 *
 * Not SipHash, on purpose: every publish splits its topic once per shard
 * it reaches, and SipHash-1-3 per level costs twice this (measured on
 * "devices/Device123/telemetry/temperature"-like topics: 300 instructions
 * per 4-level topic here, 680 with SipHash-1-3, about 15 vs 40 ns). It is
 * acceptable as a keyed hash for these tables because the seed is random
 * and never leaves the process, its mixer (128-bit multiply, folded) has
 * no seed-independent collisions that we know of (in MurmurHash and
 * CityHash differences cancel whatever the seed), and a table compares
 * the stored 64-bit hash before the name. What a client can learn, the slot
 * order of a node's children (retained messages for "a/+" come in that
 * order), would reveal bucket placement under SipHash just the same. */
uint64_t level_hash(uint64_t seed, const char *s, size_t len);

/* Cuts s into levels and hashes each in the same pass. Stops after
 * TRIE_LEVELS_MAX levels, setting `truncated`. */
void level_split(struct levels *lv, uint64_t seed, const char *s, size_t len);

/* Levels in s: one more than its '/' count ("a//b" has three). */
size_t level_count(const char *s, size_t len);

/* Smallest table that holds `live` children at most half full. */
uint32_t level_cap_for(uint32_t live);

/* True when the level is exactly the wildcard w ('+' or '#'). */
static inline bool level_is(const char *s, size_t len, char w)
{
	return len == 1 && s[0] == w;
}

/* Byte-exact equality without a libc call: levels are short. */
static inline bool level_eq(const char *a, const char *b, size_t n)
{
	uint64_t x, y;

	for (; n >= 8; a += 8, b += 8, n -= 8) {
		memcpy(&x, a, 8);
		memcpy(&y, b, 8);
		if (x != y)
			return false;
	}
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

/* ---- RCU child table (gtrie.c, retain.c) ----
 *
 * Readers (level_tab_find) take no lock; one writer at a time (the caller's
 * mutex) changes it. A removed child's slot becomes LEVEL_TOMB, never NULL,
 * so probes for other keys still run past it; slots only go NULL -> child
 * -> tombstone -> child, and at most 3/4 of slots are ever non-NULL, so
 * every probe ends. A table that fills up with tombstones, must grow or
 * may shrink is rebuilt aside and swapped in whole; the old one is freed
 * by call_rcu, so writers must be registered and online. */

struct level_tab;

/* The first member of a tree node: what its parent's table needs. The
 * node's level name sits `name_off` bytes from its start. */
struct level_node {
	struct level_tab *kids; /* NULL: no child */
	uint64_t h;		/* hash of the name */
	uint32_t len;		/* of the name */
	uint32_t nkids;		/* writer only */
};

struct level_tab {
	uint32_t mask; /* capacity - 1 */
	uint32_t used; /* non-NULL slots: children plus tombstones */
	struct rcu_head rcu;
	struct level_node *slot[];
};

/* Left in the slot of a removed child; never dereferenced for its key. */
extern struct level_node level_tomb;
#define LEVEL_TOMB (&level_tomb)

/* Reader: the child with hash h and name s, or NULL. */
static inline struct level_node *level_tab_find(const struct level_tab *t,
						uint64_t h, const char *s,
						uint32_t len, size_t name_off)
{
	if (!t)
		return NULL;
	for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
		struct level_node *c = rcu_dereference(t->slot[i]);

		if (!c)
			return NULL;
		if (c != LEVEL_TOMB && c->h == h && c->len == len &&
		    level_eq((const char *)c + name_off, s, len))
			return c;
	}
}

/* Writer: publishes c (its key known absent) under n. Returns 0, or -1
 * (no memory: nothing changed). */
int level_kids_add(struct level_node *n, struct level_node *c);

/* Writer: unlinks child c of n, shrinking or freeing the table after a
 * grace period. Never fails. */
void level_kids_del(struct level_node *n, const struct level_node *c);

/* Teardown, once no reader can run: takes n's children out of its table
 * one at a time, each slot looked at once; NULL when none is left (the
 * caller then frees n->kids). */
struct level_node *level_kids_take(struct level_node *n);

#endif
