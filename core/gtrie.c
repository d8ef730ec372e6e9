/* Global subscription trie (see gtrie.h).
 *
 * Same shape as the per-shard trie: one node per filter level, '+' and '#'
 * children in their own pointers, literal children in an open-addressing
 * table per node (core/level.h, shared with retain.c). Each node carries
 * the shard mask of the filter ending there.
 *
 * Readers (every publish, every shard) take no lock and write nothing
 * shared: they follow pointers published with rcu_assign_pointer and load
 * masks. Writers hold g->lock, so there is one writer at a time and it may
 * read the structure plainly. What a reader can be looking at is never
 * changed in a way that breaks its walk:
 *   - a node's key (hash, name) never changes once published;
 *   - a removed child's slot becomes a tombstone, never NULL, so probes
 *     for other keys still run past it; slots only go NULL -> child ->
 *     tombstone -> child, and at most 3/4 of slots are ever non-NULL, so
 *     every probe ends;
 *   - a table that fills up with tombstones or must grow is rebuilt aside
 *     and swapped in whole; the old table and every unlinked node are
 *     freed by call_rcu after a grace period.
 * The writer never waits for a grace period (no synchronize_rcu), so
 * holding g->lock while online cannot deadlock against QSBR readers. */
#include "core/gtrie.h"

#include "core/level.h"
#include "core/trie.h" /* TRIE_LEVELS_MAX: both tries take the same filters */

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define TOPIC_LEN_MAX 65535u

struct gnode {
	/* read by readers */
	struct level_node lv; /* first: the table holds &lv */
	struct gnode *plus, *hash;
	_Atomic uint64_t mask;
	/* writer only */
	struct gnode *parent;
	struct rcu_head rcu;
	char name[];
};

struct gtrie {
	struct gnode *root;
	uint64_t seed;
	_Atomic size_t nnodes;
	pthread_mutex_t lock;
};

_Static_assert(offsetof(struct gnode, lv) == 0, "a table slot is its node");

static struct gnode *tab_find(const struct level_tab *t, uint64_t h,
			      const char *s, uint32_t len)
{
	return (struct gnode *)level_tab_find(t, h, s, len,
					      offsetof(struct gnode, name));
}

/* ---- nodes (writer side, under g->lock) ---- */

static void node_free_cb(struct rcu_head *head)
{
	struct gnode *n = caa_container_of(head, struct gnode, rcu);

	assert(!n->lv.kids); /* emptied before it was unlinked */
	free(n);
}

static bool node_empty(const struct gnode *n)
{
	return atomic_load_explicit(&n->mask, memory_order_relaxed) == 0 &&
	       !n->plus && !n->hash && n->lv.nkids == 0;
}

/* Unlinks n and every ancestor left with no shard and no child; they are
 * freed once no reader can still hold them. */
static void prune(struct gtrie *g, struct gnode *n)
{
	while (n != g->root && node_empty(n)) {
		struct gnode *p = n->parent;

		if (p->plus == n)
			rcu_assign_pointer(p->plus, NULL);
		else if (p->hash == n)
			rcu_assign_pointer(p->hash, NULL);
		else
			level_kids_del(&p->lv, &n->lv);
		urcu_qsbr_call_rcu(&n->rcu, node_free_cb);
		atomic_fetch_sub_explicit(&g->nnodes, 1, memory_order_relaxed);
		n = p;
	}
}

static struct gnode *node_new(struct gnode *parent, const char *s,
			      uint32_t len, uint64_t h)
{
	struct gnode *n = calloc(1, sizeof(*n) + len);

	if (!n)
		return NULL;
	n->parent = parent;
	n->lv.h = h;
	n->lv.len = len;
	memcpy(n->name, s, len);
	return n;
}

/* The child of n for one filter level, created and published if asked. */
static struct gnode *child_get(struct gtrie *g, struct gnode *n,
			       const char *s, uint32_t len, bool create)
{
	struct gnode **wild = level_is(s, len, '+')   ? &n->plus
			      : level_is(s, len, '#') ? &n->hash
						      : NULL;
	uint64_t h = wild ? 0 : level_hash(g->seed, s, len);
	struct gnode *c = wild ? *wild : tab_find(n->lv.kids, h, s, len);

	/* Valid filters never continue past '#'. */
	assert(!n->parent || !level_is(n->name, n->lv.len, '#'));
	if (c || !create)
		return c;
	c = node_new(n, s, len, h);
	if (!c)
		return NULL;
	if (wild) {
		rcu_assign_pointer(*wild, c);
	} else if (level_kids_add(&n->lv, &c->lv) != 0) {
		free(c); /* never published */
		return NULL;
	}
	atomic_fetch_add_explicit(&g->nnodes, 1, memory_order_relaxed);
	return c;
}

static struct gnode *path_get(struct gtrie *g, const char *f, size_t len,
			      bool create)
{
	struct gnode *n = g->root;
	size_t pos = 0;

	for (;;) {
		const char *slash = memchr(f + pos, '/', len - pos);
		size_t end = slash ? (size_t)(slash - f) : len;
		struct gnode *c = child_get(g, n, f + pos, (uint32_t)(end - pos),
					    create);

		if (!c) {
			if (create)
				prune(g, n); /* what this call created */
			return NULL;
		}
		n = c;
		if (!slash)
			return n;
		pos = end + 1;
	}
}

/* ---- public ---- */

struct gtrie *gtrie_new(void)
{
	struct gtrie *g = calloc(1, sizeof(*g));

	if (!g)
		return NULL;
	g->seed = level_seed(g);
	g->root = node_new(NULL, "", 0, 0);
	if (!g->root) {
		free(g);
		return NULL;
	}
	pthread_mutex_init(&g->lock, NULL);
	return g;
}

/* No reader can run, so everything is freed at once (nodes already handed
 * to call_rcu are not reachable from the root any more). Post-order walk
 * with parent pointers: no recursion, each table slot looked at once. */
void gtrie_free(struct gtrie *g)
{
	if (!g)
		return;
	struct gnode *n = g->root;
	while (n) {
		struct gnode *c = n->plus ? n->plus : n->hash;

		if (c == n->plus)
			n->plus = NULL;
		else
			n->hash = NULL;
		if (!c)
			c = (struct gnode *)level_kids_take(&n->lv);
		if (c) {
			n = c;
			continue;
		}
		struct gnode *p = n->parent;
		free(n->lv.kids);
		free(n);
		n = p;
	}
	pthread_mutex_destroy(&g->lock);
	free(g);
}

int gtrie_add(struct gtrie *g, const char *filter, size_t len, unsigned shard)
{
	assert(g && filter && shard < 64);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	assert(urcu_qsbr_read_ongoing()); /* call_rcu needs an online thread */
	if (level_count(filter, len) > TRIE_LEVELS_MAX)
		return -1;
	pthread_mutex_lock(&g->lock);
	struct gnode *n = path_get(g, filter, len, true);
	if (n)
		atomic_fetch_or_explicit(&n->mask, UINT64_C(1) << shard,
					 memory_order_relaxed);
	pthread_mutex_unlock(&g->lock);
	return n ? 0 : -1;
}

int gtrie_remove(struct gtrie *g, const char *filter, size_t len,
		 unsigned shard)
{
	assert(g && filter && shard < 64);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	assert(urcu_qsbr_read_ongoing());
	if (level_count(filter, len) > TRIE_LEVELS_MAX)
		return -1;
	pthread_mutex_lock(&g->lock);
	struct gnode *n = path_get(g, filter, len, false);
	if (n) {
		atomic_fetch_and_explicit(&n->mask, ~(UINT64_C(1) << shard),
					  memory_order_relaxed);
		prune(g, n);
	}
	pthread_mutex_unlock(&g->lock);
	return 0;
}

struct frame {
	const struct gnode *n;
	uint32_t i; /* topic levels consumed to reach n */
};

static uint64_t mask_of(const struct gnode *n)
{
	return atomic_load_explicit(&n->mask, memory_order_relaxed);
}

/* Same walk as trie_match: explicit stack, at most one waiting frame per
 * level. No allocation, no lock, no syscall. */
uint64_t gtrie_match(const struct gtrie *g, const char *topic, size_t len)
{
	assert(g && (topic || len == 0) && len <= TOPIC_LEN_MAX);
	assert(urcu_qsbr_read_ongoing()); /* registered and online */
	struct levels lv;
	struct frame st[TRIE_LEVELS_MAX + 1];
	uint32_t sp = 0;
	uint64_t mask = 0;
	bool dollar = len > 0 && topic[0] == '$';

	level_split(&lv, g->seed, topic, len);
	st[sp++] = (struct frame){g->root, 0};
	while (sp) {
		struct frame f = st[--sp];
		const struct gnode *w = rcu_dereference(f.n->hash);

		if (f.i == lv.n) {
			if (!lv.truncated)
				mask |= mask_of(f.n) | (w ? mask_of(w) : 0);
			continue;
		}
		bool wild = !(f.i == 0 && dollar); /* 4.7.2 */
		if (wild && w)
			mask |= mask_of(w);
		assert(sp + 2 <= TRIE_LEVELS_MAX + 1);
		w = rcu_dereference(f.n->plus);
		if (wild && w)
			st[sp++] = (struct frame){w, f.i + 1};
		w = tab_find(rcu_dereference(f.n->lv.kids), lv.h[f.i],
			     topic + lv.off[f.i], lv.len[f.i]);
		if (w)
			st[sp++] = (struct frame){w, f.i + 1};
	}
	return mask;
}

size_t gtrie_node_count(const struct gtrie *g)
{
	assert(g);
	return atomic_load_explicit(&g->nnodes, memory_order_relaxed);
}
