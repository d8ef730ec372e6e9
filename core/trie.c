/* Per-shard subscription trie (see trie.h).
 *
 * One node per filter level. A node finds its literal children through an
 * open-addressing table keyed by the level's hash (linear probing, power of
 * two capacity, at most 3/4 full), so a level under "devices/" with 5,000
 * device ids costs one probe, not a list walk. Levels are split and hashed
 * by core/level.h, as in gtrie.c and retain.c; the table is this file's
 * own: single-threaded, with backward-shift deletion where theirs keep RCU
 * tombstones. The '+' and '#' children sit in their own pointers: a
 * wildcard costs a load, never a lookup. A node's subscriptions are one
 * growable array.
 *
 * Matching walks the topic's levels with an explicit stack of (node, level)
 * pairs and visits only nodes whose level matches, so its cost depends on
 * the topic and the filters that match it, never on unrelated filters.
 *
 * Everything here runs on the owning shard's thread: no atomics, no locks. */
#include "core/trie.h"

#include "core/level.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* MQTT strings carry a 16-bit length. */
#define TOPIC_LEN_MAX 65535u

struct tnode {
	struct tnode *parent;
	struct tnode *plus;	  /* the '+' child */
	struct tnode *hash;	  /* the '#' child: never has children */
	struct tnode **kids;	  /* literal children, kcap slots, NULL = free */
	uint32_t kcap, klive;
	struct trie_sub *subs;
	uint32_t nsubs, subcap;
	uint32_t ngroups;	  /* subs with TRIE_SUB_GROUP */
	uint64_t h;		  /* hash of name: skips memcmp, rehashes */
	uint32_t len;
	char name[];		  /* the level, not NUL-terminated */
};

struct trie {
	struct tnode *root;
	size_t nfilters;
	size_t nnodes;
	uint64_t seed;
};

_Static_assert(TRIE_LEVELS_MAX >= 1 && TRIE_LEVELS_MAX <= TOPIC_LEN_MAX,
	       "level bound must fit the topic length bound");

/* ---- literal children table ---- */

static struct tnode *kids_find(const struct tnode *n, uint64_t h,
			       const char *s, uint32_t len)
{
	if (!n->kids)
		return NULL;
	uint32_t mask = n->kcap - 1;
	/* Terminates: the table is never more than 3/4 full. */
	for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
		const struct tnode *c = n->kids[i];

		if (!c)
			return NULL;
		if (c->h == h && c->len == len && level_eq(c->name, s, len))
			return n->kids[i];
	}
}

static void kids_place(struct tnode **slots, uint32_t cap, struct tnode *c)
{
	uint32_t i = (uint32_t)c->h & (cap - 1);

	while (slots[i])
		i = (i + 1) & (cap - 1);
	slots[i] = c;
}

static int kids_resize(struct tnode *n, uint32_t cap)
{
	struct tnode **slots = NULL;

	assert(cap == 0 || (cap >= LEVEL_CAP_MIN && (cap & (cap - 1)) == 0));
	assert(cap == 0 ? n->klive == 0 : n->klive * 4 <= cap * 3);
	if (cap) {
		slots = calloc(cap, sizeof(*slots));
		if (!slots)
			return -1;
		for (uint32_t i = 0; i < n->kcap; i++)
			if (n->kids[i])
				kids_place(slots, cap, n->kids[i]);
	}
	free(n->kids);
	n->kids = slots;
	n->kcap = cap;
	return 0;
}

static int kids_add(struct tnode *n, struct tnode *c)
{
	if ((n->klive + 1) * 4 > n->kcap * 3 &&
	    kids_resize(n, level_cap_for(n->klive + 1)) != 0)
		return -1;
	kids_place(n->kids, n->kcap, c);
	n->klive++;
	return 0;
}

/* Removes c with backward-shift deletion: entries after the hole move back
 * when their home slot allows it, so probes never need tombstones. */
static void kids_del(struct tnode *n, const struct tnode *c)
{
	uint32_t mask = n->kcap - 1, i = (uint32_t)c->h & mask;

	while (n->kids[i] != c)
		i = (i + 1) & mask;
	for (uint32_t j = (i + 1) & mask; n->kids[j]; j = (j + 1) & mask) {
		uint32_t home = (uint32_t)n->kids[j]->h & mask;
		/* The entry at j may fill the hole at i only if its home is
		 * not cyclically within (i, j]. */
		bool stays = i <= j ? (home > i && home <= j)
				    : (home > i || home <= j);
		if (!stays) {
			n->kids[i] = n->kids[j];
			i = j;
		}
	}
	n->kids[i] = NULL;
	n->klive--;
	if (n->klive == 0)
		kids_resize(n, 0);
	else if (n->kcap > LEVEL_CAP_MIN && n->klive * 8 < n->kcap)
		(void)kids_resize(n, level_cap_for(n->klive)); /* may stay big */
}

/* ---- nodes ---- */

static struct tnode *node_new(struct trie *t, struct tnode *parent,
			      const char *s, uint32_t len, uint64_t h)
{
	struct tnode *n = calloc(1, sizeof(*n) + len);

	if (!n)
		return NULL;
	n->parent = parent;
	n->h = h;
	n->len = len;
	memcpy(n->name, s, len);
	t->nnodes++;
	return n;
}

static bool node_empty(const struct tnode *n)
{
	return n->nsubs == 0 && !n->plus && !n->hash && n->klive == 0;
}

/* Frees n and every ancestor left without subscriptions or children. */
static void prune(struct trie *t, struct tnode *n)
{
	while (n != t->root && node_empty(n)) {
		struct tnode *p = n->parent;

		if (p->plus == n)
			p->plus = NULL;
		else if (p->hash == n)
			p->hash = NULL;
		else
			kids_del(p, n);
		assert(!n->kids && !n->subs);
		free(n);
		t->nnodes--;
		n = p;
	}
}

/* The child of n for one filter level, created when `create` is set. */
static struct tnode *child_get(struct trie *t, struct tnode *n, const char *s,
			       uint32_t len, bool create)
{
	struct tnode **wild = level_is(s, len, '+')   ? &n->plus
			      : level_is(s, len, '#') ? &n->hash
						      : NULL;
	uint64_t h = wild ? 0 : level_hash(t->seed, s, len);
	struct tnode *c = wild ? *wild : kids_find(n, h, s, len);

	/* Valid filters never continue past '#'. */
	assert(!n->parent || !level_is(n->name, n->len, '#'));
	if (c || !create)
		return c;
	c = node_new(t, n, s, len, h);
	if (!c)
		return NULL;
	if (wild) {
		*wild = c;
	} else if (kids_add(n, c) != 0) {
		free(c);
		t->nnodes--;
		return NULL;
	}
	return c;
}

/* The node of a filter; on failure to create it, prunes what it added. */
static struct tnode *path_get(struct trie *t, const char *f, size_t len,
			      bool create)
{
	struct tnode *n = t->root;
	size_t pos = 0;

	for (;;) {
		const char *slash = memchr(f + pos, '/', len - pos);
		size_t end = slash ? (size_t)(slash - f) : len;
		struct tnode *c = child_get(t, n, f + pos, (uint32_t)(end - pos),
					    create);

		if (!c) {
			if (create)
				prune(t, n);
			return NULL;
		}
		n = c;
		if (!slash)
			return n;
		pos = end + 1;
	}
}

/* ---- public ---- */

struct trie *trie_new(void)
{
	struct trie *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->seed = level_seed(t);
	t->root = node_new(t, NULL, "", 0, 0);
	if (!t->root) {
		free(t);
		return NULL;
	}
	t->nnodes = 0; /* the root is not counted */
	return t;
}

/* Post-order teardown with parent pointers as the stack: no recursion. A
 * node's table is scanned from the top down, kcap shrinking as the cursor,
 * so each slot is looked at once. */
void trie_free(struct trie *t)
{
	if (!t)
		return;
	struct tnode *n = t->root;
	while (n) {
		struct tnode *c = n->plus ? n->plus : n->hash;

		if (c == n->plus)
			n->plus = NULL;
		else
			n->hash = NULL;
		while (!c && n->kcap > 0)
			c = n->kids[--n->kcap];
		if (c) {
			n = c;
			continue;
		}
		struct tnode *p = n->parent;
		free(n->kids);
		free(n->subs);
		free(n);
		n = p;
	}
	free(t);
}

static int subs_push(struct tnode *n, const struct trie_sub *sub)
{
	if (n->nsubs == n->subcap) {
		uint32_t cap = n->subcap ? n->subcap * 2 : 2;
		struct trie_sub *s = realloc(n->subs, cap * sizeof(*s));

		if (!s)
			return -1;
		n->subs = s;
		n->subcap = cap;
	}
	n->subs[n->nsubs++] = *sub;
	return 0;
}

enum trie_result trie_subscribe(struct trie *t, const char *filter,
				size_t len, const struct trie_sub *sub)
{
	assert(t && filter && sub && sub->owner);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	if (level_count(filter, len) > TRIE_LEVELS_MAX)
		return TRIE_TOO_DEEP;
	struct tnode *n = path_get(t, filter, len, true);
	if (!n)
		return TRIE_NO_MEMORY;
	for (uint32_t i = 0; i < n->nsubs; i++) {
		if (n->subs[i].owner == sub->owner) {
			n->ngroups -= !!(n->subs[i].options & TRIE_SUB_GROUP);
			n->ngroups += !!(sub->options & TRIE_SUB_GROUP);
			n->subs[i] = *sub;
			return TRIE_REPLACED;
		}
	}
	if (subs_push(n, sub) != 0) {
		prune(t, n);
		return TRIE_NO_MEMORY;
	}
	n->ngroups += !!(sub->options & TRIE_SUB_GROUP);
	if (n->nsubs > 1)
		return TRIE_ADDED;
	t->nfilters++;
	return TRIE_ADDED_FIRST;
}

static void subs_shrink(struct tnode *n)
{
	if (n->nsubs == 0) {
		free(n->subs);
		n->subs = NULL;
		n->subcap = 0;
	} else if (n->subcap > 8 && n->nsubs * 4 < n->subcap) {
		struct trie_sub *s = realloc(n->subs, n->subcap / 2 * sizeof(*s));

		if (s) { /* a failed shrink keeps the larger array */
			n->subs = s;
			n->subcap /= 2;
		}
	}
}

enum trie_result trie_unsubscribe(struct trie *t, const char *filter,
				  size_t len, const void *owner)
{
	assert(t && filter && owner);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	if (level_count(filter, len) > TRIE_LEVELS_MAX)
		return TRIE_NOT_FOUND; /* could never have been added */
	struct tnode *n = path_get(t, filter, len, false);
	if (!n)
		return TRIE_NOT_FOUND;
	uint32_t i = 0;
	while (i < n->nsubs && n->subs[i].owner != owner)
		i++;
	if (i == n->nsubs)
		return TRIE_NOT_FOUND;
	n->ngroups -= !!(n->subs[i].options & TRIE_SUB_GROUP);
	n->subs[i] = n->subs[--n->nsubs]; /* order carries no meaning */
	subs_shrink(n);
	if (n->nsubs > 0)
		return TRIE_REMOVED;
	t->nfilters--;
	prune(t, n);
	return TRIE_REMOVED_LAST;
}

static void report(const struct tnode *n, trie_match_cb cb, void *ctx)
{
	for (uint32_t i = 0; i < n->nsubs; i++)
		cb(ctx, &n->subs[i]);
}

struct frame {
	const struct tnode *n;
	uint32_t i; /* levels of the topic consumed to reach n */
};

void trie_match(const struct trie *t, const char *topic, size_t len,
		trie_match_cb cb, void *ctx)
{
	assert(t && cb && (topic || len == 0) && len <= TOPIC_LEN_MAX);
	struct levels lv;
	/* Each pop pushes at most two frames one level deeper and the
	 * deeper one is popped first, so at most one frame waits per level. */
	struct frame st[TRIE_LEVELS_MAX + 1];
	uint32_t sp = 0;
	bool dollar = len > 0 && topic[0] == '$';

	level_split(&lv, t->seed, topic, len);
	st[sp++] = (struct frame){t->root, 0};
	while (sp) {
		struct frame f = st[--sp];

		if (f.i == lv.n) {
			if (!lv.truncated) {
				report(f.n, cb, ctx);
				if (f.n->hash) /* "a/#" matches "a" */
					report(f.n->hash, cb, ctx);
			}
			continue;
		}
		/* 4.7.2: no wildcard first level for a '$' topic. */
		bool wild = !(f.i == 0 && dollar);
		if (wild && f.n->hash)
			report(f.n->hash, cb, ctx);
		assert(sp + 2 <= TRIE_LEVELS_MAX + 1);
		if (wild && f.n->plus)
			st[sp++] = (struct frame){f.n->plus, f.i + 1};
		const struct tnode *c = kids_find(f.n, lv.h[f.i],
						  topic + lv.off[f.i],
						  lv.len[f.i]);
		if (c)
			st[sp++] = (struct frame){c, f.i + 1};
	}
}

uint32_t trie_plain_count(struct trie *t, const char *filter, size_t len)
{
	assert(t && filter);
	if (!len || len > TOPIC_LEN_MAX ||
	    level_count(filter, len) > TRIE_LEVELS_MAX)
		return 0;
	const struct tnode *n = path_get(t, filter, len, false);
	return n ? n->nsubs - n->ngroups : 0;
}

size_t trie_filter_count(const struct trie *t)
{
	assert(t);
	return t->nfilters;
}

size_t trie_node_count(const struct trie *t)
{
	assert(t);
	return t->nnodes;
}
