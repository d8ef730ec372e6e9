/* Global subscription trie (see gtrie.h).
 *
 * Same shape as the per-shard trie: one node per filter level, '+' and '#'
 * children in their own pointers, literal children in an open-addressing
 * table per node. Each node carries the shard mask of the filter ending
 * there.
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

#include "core/trie.h" /* TRIE_LEVELS_MAX: both tries take the same filters */

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
/* Inline rcu_dereference/rcu_assign_pointer (liburcu's knob for its
 * under-10-line functions in non-LGPL code); otherwise every pointer load on
 * the read path is a call into the library. */
#define URCU_INLINE_SMALL_FUNCTIONS
#include <urcu/urcu-qsbr.h>

#define TOPIC_LEN_MAX 65535u
#define KIDS_CAP_MIN 4u

struct gnode;

struct gtab {
	uint32_t mask;	/* capacity - 1 */
	uint32_t used;	/* non-NULL slots: children plus tombstones */
	struct rcu_head rcu;
	struct gnode *slot[];
};

struct gnode {
	/* read by readers */
	struct gnode *plus, *hash;
	struct gtab *kids;
	_Atomic uint64_t mask;
	uint64_t h;
	uint32_t len;
	/* writer only */
	uint32_t nkids;
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

/* Left in the slot of a removed child; never dereferenced for its key. */
static struct gnode tombstone;
#define TOMB (&tombstone)

struct levels {
	uint32_t n;
	bool truncated;
	uint32_t off[TRIE_LEVELS_MAX];
	uint32_t len[TRIE_LEVELS_MAX];
	uint64_t h[TRIE_LEVELS_MAX];
};

/* Hashing and splitting: the same code as core/trie.c, so both tries
 * agree level for level. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "level hashing reads words little-endian"
#endif

#define SLASHES 0x2f2f2f2f2f2f2f2full
#define BYTES_01 0x0101010101010101ull
#define BYTES_80 0x8080808080808080ull

static inline uint64_t mix64(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* The last step of a level's hash: `tail` holds its last len % 8 bytes. */
static inline uint64_t hash_end(uint64_t h, uint64_t tail, size_t len)
{
	return mix64(h ^ tail ^ ((uint64_t)len * 0x9e3779b97f4a7c15ull),
		     0xe7037ed1a0b428dbull);
}

/* Keyed hash of one level, 8 bytes per multiply. The per-structure random
 * seed keeps clients from choosing names that collide in one table.
 * levels_split computes the same value while it scans for '/'. */
static uint64_t level_hash(uint64_t seed, const char *s, size_t len)
{
	uint64_t h = seed, w = 0;
	size_t n = len;

	for (; n >= 8; s += 8, n -= 8) {
		memcpy(&w, s, 8);
		h = mix64(h ^ w, 0xa0761d6478bd642full);
	}
	w = 0;
	for (size_t i = 0; i < n; i++)
		w |= (uint64_t)(unsigned char)s[i] << (8 * i);
	return hash_end(h, w, len);
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

/* Cuts s into levels and hashes each in the same pass, a word at a time:
 * a word without '/' feeds the hash, the word holding the next '/' ends
 * the level. Stops after TRIE_LEVELS_MAX levels, setting `truncated`. */
static void levels_split(struct levels *lv, uint64_t seed, const char *s,
			 size_t len)
{
	size_t start = 0, pos = 0;
	uint64_t h = seed;

	lv->n = 0;
	lv->truncated = false;
	for (;;) {
		uint64_t w = 0;
		size_t k = 0; /* bytes of this word before the '/' */

		if (pos + 8 <= len) {
			memcpy(&w, s + pos, 8);
			uint64_t x = w ^ SLASHES;
			uint64_t z = (x - BYTES_01) & ~x & BYTES_80;
			if (!z) {
				h = mix64(h ^ w, 0xa0761d6478bd642full);
				pos += 8;
				continue;
			}
			k = (size_t)__builtin_ctzll(z) >> 3; /* first '/' */
			w &= k ? ~0ull >> (64 - 8 * k) : 0;
		} else {
			for (; pos + k < len && s[pos + k] != '/'; k++)
				w |= (uint64_t)(unsigned char)s[pos + k] << (8 * k);
		}
		if (lv->n == TRIE_LEVELS_MAX) {
			lv->truncated = true;
			return;
		}
		lv->off[lv->n] = (uint32_t)start;
		lv->len[lv->n] = (uint32_t)(pos + k - start);
		lv->h[lv->n] = hash_end(h, w, pos + k - start);
		lv->n++;
		if (pos + k == len)
			return;
		pos = start = pos + k + 1;
		h = seed;
	}
}

static size_t filter_depth(const char *f, size_t len)
{
	size_t depth = 1;

	for (size_t i = 0; i < len; i++)
		depth += f[i] == '/';
	return depth;
}

static bool is_wild(const char *s, size_t len, char w)
{
	return len == 1 && s[0] == w;
}

/* ---- children table: RCU readers, one writer ---- */

static struct gnode *tab_find(const struct gtab *t, uint64_t h, const char *s,
			      uint32_t len)
{
	if (!t)
		return NULL;
	for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
		struct gnode *c = rcu_dereference(t->slot[i]);

		if (!c)
			return NULL;
		if (c != TOMB && c->h == h && c->len == len &&
		    level_eq(c->name, s, len))
			return c;
	}
}

/* Writer: puts c in the first free or tombstoned slot of its probe path.
 * c's key is known absent. */
static void tab_place(struct gtab *t, struct gnode *c)
{
	uint32_t i = (uint32_t)c->h & t->mask;

	while (t->slot[i] && t->slot[i] != TOMB)
		i = (i + 1) & t->mask;
	if (!t->slot[i])
		t->used++;
	rcu_assign_pointer(t->slot[i], c);
}

static void tab_free_cb(struct rcu_head *head)
{
	free(caa_container_of(head, struct gtab, rcu));
}

static uint32_t kids_cap_for(uint32_t live)
{
	uint32_t cap = KIDS_CAP_MIN;

	while (cap < live * 2)
		cap *= 2;
	return cap;
}

/* Replaces n's table by a fresh one of `cap` slots (0: none) holding the
 * same children; readers still in the old one finish there. */
static int kids_rebuild(struct gnode *n, uint32_t cap)
{
	struct gtab *old = n->kids, *t = NULL;

	if (cap) {
		t = calloc(1, sizeof(*t) + cap * sizeof(t->slot[0]));
		if (!t)
			return -1;
		t->mask = cap - 1;
		for (uint32_t i = 0; old && i <= old->mask; i++)
			if (old->slot[i] && old->slot[i] != TOMB)
				tab_place(t, old->slot[i]);
	}
	rcu_assign_pointer(n->kids, t);
	if (old)
		urcu_qsbr_call_rcu(&old->rcu, tab_free_cb);
	return 0;
}

static int kids_add(struct gnode *n, struct gnode *c)
{
	struct gtab *t = n->kids;

	if ((!t || (t->used + 1) * 4 > (t->mask + 1) * 3) &&
	    kids_rebuild(n, kids_cap_for(n->nkids + 1)) != 0)
		return -1;
	tab_place(n->kids, c);
	n->nkids++;
	return 0;
}

static void kids_del(struct gnode *n, const struct gnode *c)
{
	struct gtab *t = n->kids;
	uint32_t i = (uint32_t)c->h & t->mask;

	while (t->slot[i] != c)
		i = (i + 1) & t->mask;
	rcu_assign_pointer(t->slot[i], TOMB);
	n->nkids--;
	if (n->nkids == 0)
		(void)kids_rebuild(n, 0); /* freeing cannot fail */
	else if (t->mask + 1 > KIDS_CAP_MIN && n->nkids * 8 < t->mask + 1)
		(void)kids_rebuild(n, kids_cap_for(n->nkids)); /* may stay */
}

/* ---- nodes (writer side, under g->lock) ---- */

static void node_free_cb(struct rcu_head *head)
{
	struct gnode *n = caa_container_of(head, struct gnode, rcu);

	assert(!n->kids); /* emptied before it was unlinked */
	free(n);
}

static bool node_empty(const struct gnode *n)
{
	return atomic_load_explicit(&n->mask, memory_order_relaxed) == 0 &&
	       !n->plus && !n->hash && n->nkids == 0;
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
			kids_del(p, n);
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
	n->h = h;
	n->len = len;
	memcpy(n->name, s, len);
	return n;
}

/* The child of n for one filter level, created and published if asked. */
static struct gnode *child_get(struct gtrie *g, struct gnode *n,
			       const char *s, uint32_t len, bool create)
{
	struct gnode **wild = is_wild(s, len, '+')   ? &n->plus
			      : is_wild(s, len, '#') ? &n->hash
						     : NULL;
	uint64_t h = wild ? 0 : level_hash(g->seed, s, len);
	struct gnode *c = wild ? *wild : tab_find(n->kids, h, s, len);

	/* Valid filters never continue past '#'. */
	assert(!n->parent || !is_wild(n->name, n->len, '#'));
	if (c || !create)
		return c;
	c = node_new(n, s, len, h);
	if (!c)
		return NULL;
	if (wild) {
		rcu_assign_pointer(*wild, c);
	} else if (kids_add(n, c) != 0) {
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
	if (getrandom(&g->seed, sizeof(g->seed), GRND_NONBLOCK) !=
	    sizeof(g->seed))
		g->seed = (uint64_t)(uintptr_t)g * 0x9e3779b97f4a7c15ull;
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
		while (!c && n->nkids > 0) {
			/* mask counts down as the cursor; slots above it are
			 * cleared, and nkids reaches 0 at slot 0 at the latest */
			struct gtab *t = n->kids;

			c = t->slot[t->mask];
			t->slot[t->mask] = NULL;
			if (c == TOMB)
				c = NULL;
			else if (c)
				n->nkids--;
			if (t->mask > 0)
				t->mask--;
		}
		if (c) {
			n = c;
			continue;
		}
		struct gnode *p = n->parent;
		free(n->kids);
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
	if (filter_depth(filter, len) > TRIE_LEVELS_MAX)
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
	if (filter_depth(filter, len) > TRIE_LEVELS_MAX)
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

	levels_split(&lv, g->seed, topic, len);
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
		w = tab_find(rcu_dereference(f.n->kids), lv.h[f.i],
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
