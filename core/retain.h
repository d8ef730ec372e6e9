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
 * clears the topic. topic must be a valid topic name. Returns 0 or -1. */
int retain_set(struct retain_store *r, const char *topic, size_t len,
	       void *msg);

/* Calls cb for every retained message whose topic matches filter (filter
 * rules as trie_match, including '$'). cb runs inside the read-side
 * critical section and must not block. */
typedef void (*retain_match_cb)(void *ctx, void *msg);
void retain_match(struct retain_store *r, const char *filter, size_t len,
		  retain_match_cb cb, void *ctx);

size_t retain_count(const struct retain_store *r);

#endif
