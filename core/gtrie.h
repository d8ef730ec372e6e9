/* Global subscription trie, shared by all shards.
 *
 * Records, for each topic filter, which shards have at least one local
 * subscriber on it (a 64-bit shard mask). Readers match lock-free under
 * liburcu QSBR; writers serialise on an internal mutex. It changes only
 * when a shard gains its first or loses its last subscriber on a filter,
 * so writes are rare and never on the per-message path.
 *
 * Reader threads must be registered with urcu-qsbr (rcu_register_thread)
 * and online while calling gtrie_match; they announce quiescent states
 * between loop turns. Freed nodes are reclaimed with call_rcu, so writers
 * (gtrie_add, gtrie_remove) must be registered and online as well. */
#ifndef KITE_GTRIE_H
#define KITE_GTRIE_H

#include <stddef.h>
#include <stdint.h>

struct gtrie;

struct gtrie *gtrie_new(void);
/* Only once no reader can be running. */
void gtrie_free(struct gtrie *g);

/* filter must be valid; shard < 64. Return 0, or -1 (too deep / no
 * memory). Adding an already-present shard or removing an absent one is a
 * no-op. */
int gtrie_add(struct gtrie *g, const char *filter, size_t len,
	      unsigned shard);
int gtrie_remove(struct gtrie *g, const char *filter, size_t len,
		 unsigned shard);

/* Union of the shard masks of every filter matching topic (same rules as
 * trie_match, including '$'). */
uint64_t gtrie_match(const struct gtrie *g, const char *topic, size_t len);

/* Nodes linked below the root: 0 once every filter is removed (empty nodes
 * are unlinked at once, freed after a grace period). Memory accounting and
 * tests; any thread. */
size_t gtrie_node_count(const struct gtrie *g);

#endif
