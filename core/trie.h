/* Per-shard subscription trie: single-threaded, owned by one shard.
 *
 * Maps topic filters to the subscriptions of the shard's own sessions.
 * Levels are split on '/', empty levels are real levels ("a//b" has three).
 * Matching follows the rules of core/topic.h (topic_matches, which the
 * unit tests and fuzz_trie hold this walk to): '+' matches one level, '#'
 * matches the parent level and everything below, and topics starting with
 * '$' are not matched by a filter whose first level is a wildcard. Topics
 * must be valid (non-empty). Matching uses an explicit bounded stack, never
 * recursion. */
#ifndef KITE_TRIE_H
#define KITE_TRIE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest filter or topic the tries accept (levels). Deeper filters are
 * refused at SUBSCRIBE; deeper topics match nothing deeper than this. */
#define TRIE_LEVELS_MAX 256

struct trie;

/* One subscription as the shard sees it. `owner` is the subscribing
 * session (opaque here); `options` and `sub_id` are the caller's. */
struct trie_sub {
	void *owner;
	uint32_t options;
	uint32_t sub_id;
};

/* options bit: the owner stands for a group of sessions (a shared
 * subscription), counted apart by trie_plain_count. Other bits are the
 * caller's. */
#define TRIE_SUB_GROUP 0x40u

enum trie_result {
	TRIE_ADDED_FIRST = 1, /* the filter had no subscriber in this trie */
	TRIE_ADDED = 2,	      /* a new owner on a filter that had others */
	TRIE_REPLACED = 3,    /* owner was already subscribed: options updated */
	TRIE_REMOVED_LAST = 4, /* the filter has no subscriber left */
	TRIE_REMOVED = 5,
	TRIE_NOT_FOUND = 6,
	TRIE_TOO_DEEP = -1,
	TRIE_NO_MEMORY = -2,
};

struct trie *trie_new(void);
void trie_free(struct trie *t);

/* filter must be valid (mqtt_topic_filter_valid); not NUL-terminated. */
enum trie_result trie_subscribe(struct trie *t, const char *filter,
				size_t len, const struct trie_sub *sub);
enum trie_result trie_unsubscribe(struct trie *t, const char *filter,
				  size_t len, const void *owner);

/* Calls cb once for every subscription whose filter matches topic. An owner
 * with several matching filters is reported once per filter: callers that
 * want one delivery per owner merge them. cb must not modify the trie. */
typedef void (*trie_match_cb)(void *ctx, const struct trie_sub *sub);
void trie_match(const struct trie *t, const char *topic, size_t len,
		trie_match_cb cb, void *ctx);

/* Subscribers of exactly this filter that are not TRIE_SUB_GROUP: a
 * node of a cluster wants messages for a filter while it has one (its
 * shared groups get theirs through queue groups, docs/CLUSTER.md). */
uint32_t trie_plain_count(struct trie *t, const char *filter, size_t len);

/* Number of distinct filters with at least one subscriber. */
size_t trie_filter_count(const struct trie *t);

/* Nodes allocated below the root: 0 once every filter is unsubscribed
 * (empty nodes are pruned). Memory accounting and tests. */
size_t trie_node_count(const struct trie *t);

#endif
