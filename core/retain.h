/* Retained-message store, shared by all shards.
 *
 * One message per topic. Readers walk it lock-free under liburcu QSBR
 * (same reader rules as gtrie.h); writers serialise on an internal mutex.
 * Messages are opaque here: the store holds one reference on each and
 * gives it back through `release` after a grace period (call_rcu), so a
 * reader that is handed a message may take its own reference safely. */
#ifndef KITE_RETAIN_H
#define KITE_RETAIN_H

#include <stddef.h>

struct retain_store;

struct retain_store *retain_new(void (*release)(void *msg));
/* Releases every stored message; only once no reader can be running. */
void retain_free(struct retain_store *r);

/* Stores msg (the store takes over the caller's reference) as the retained
 * message of topic, replacing and releasing any previous one; msg NULL
 * clears the topic. topic must be a valid topic name. Returns 0, or -1
 * (deeper than TRIE_LEVELS_MAX / no memory): then nothing changed and the
 * caller keeps its reference. The caller must be registered and online
 * (call_rcu); `release` runs later on liburcu's call_rcu thread. */
int retain_set(struct retain_store *r, const char *topic, size_t len,
	       void *msg);

/* Calls cb for every retained message whose topic matches filter (filter
 * rules as trie_match, including '$'). cb runs inside the read-side
 * critical section and must not block. */
typedef void (*retain_match_cb)(void *ctx, void *msg);
void retain_match(struct retain_store *r, const char *filter, size_t len,
		  retain_match_cb cb, void *ctx);

size_t retain_count(const struct retain_store *r);

/* Nodes linked below the root: 0 once every topic is cleared (empty nodes
 * are unlinked at once, freed after a grace period). Memory accounting and
 * tests; any thread. */
size_t retain_node_count(const struct retain_store *r);

#endif
