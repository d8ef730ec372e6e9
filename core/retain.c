/* Retained-message store (see retain.h).
 *
 * A tree of topic levels; a node holds the retained message of the topic
 * ending there, or NULL. Children are found through an open-addressing
 * table per node, laid out and published exactly as in gtrie.c (read that
 * header comment for the reader/writer rules): slots go NULL -> child ->
 * tombstone -> child, tables are rebuilt aside and swapped whole, and
 * unlinked tables, nodes and replaced messages go through call_rcu.
 *
 * retain_match walks the tree guided by the filter: a literal level is one
 * table lookup, '+' iterates one node's children, '#' iterates a whole
 * subtree. The walk keeps an explicit stack of table cursors, one per tree
 * depth, bounded because stored topics have at most TRIE_LEVELS_MAX
 * levels. */
#include "core/retain.h"

#include "core/trie.h" /* TRIE_LEVELS_MAX */

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
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

struct rnode;

struct rtab {
	uint32_t mask;	/* capacity - 1 */
	uint32_t used;	/* non-NULL slots: children plus tombstones */
	struct rcu_head rcu;
	struct rnode *slot[];
};

struct rnode {
	/* read by readers */
	struct rtab *kids;
	void *msg;
	uint64_t h;
	uint32_t len;
	/* writer only */
	uint32_t nkids;
	struct rnode *parent;
	struct rcu_head rcu;
	char name[];
};

/* A replaced or cleared message waiting for its grace period. */
struct rdrop {
	struct rcu_head rcu;
	void *msg;
	void (*release)(void *msg);
};

struct retain_store {
	struct rnode *root;
	void (*release)(void *msg);
	uint64_t seed;
	_Atomic size_t count;
	_Atomic size_t nnodes;
	pthread_mutex_t lock;
};

static struct rnode tombstone;
#define TOMB (&tombstone)

/* A filter cut into levels, each hashed once. */
struct levels {
	uint32_t n;
	bool truncated;
	uint32_t off[TRIE_LEVELS_MAX];
	uint32_t len[TRIE_LEVELS_MAX];
	uint64_t h[TRIE_LEVELS_MAX];
};

/* Hashing and splitting: the same code as core/trie.c. */
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

static bool is_wild(const char *s, size_t len, char w)
{
	return len == 1 && s[0] == w;
}

/* ---- children table: RCU readers, one writer ---- */

static struct rnode *tab_find(const struct rtab *t, uint64_t h, const char *s,
			      uint32_t len)
{
	if (!t)
		return NULL;
	for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
		struct rnode *c = rcu_dereference(t->slot[i]);

		if (!c)
			return NULL;
		if (c != TOMB && c->h == h && c->len == len &&
		    level_eq(c->name, s, len))
			return c;
	}
}

static void tab_place(struct rtab *t, struct rnode *c)
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
	free(caa_container_of(head, struct rtab, rcu));
}

static uint32_t kids_cap_for(uint32_t live)
{
	uint32_t cap = KIDS_CAP_MIN;

	while (cap < live * 2)
		cap *= 2;
	return cap;
}

static int kids_rebuild(struct rnode *n, uint32_t cap)
{
	struct rtab *old = n->kids, *t = NULL;

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

static int kids_add(struct rnode *n, struct rnode *c)
{
	struct rtab *t = n->kids;

	if ((!t || (t->used + 1) * 4 > (t->mask + 1) * 3) &&
	    kids_rebuild(n, kids_cap_for(n->nkids + 1)) != 0)
		return -1;
	tab_place(n->kids, c);
	n->nkids++;
	return 0;
}

static void kids_del(struct rnode *n, const struct rnode *c)
{
	struct rtab *t = n->kids;
	uint32_t i = (uint32_t)c->h & t->mask;

	while (t->slot[i] != c)
		i = (i + 1) & t->mask;
	rcu_assign_pointer(t->slot[i], TOMB);
	n->nkids--;
	if (n->nkids == 0)
		(void)kids_rebuild(n, 0);
	else if (t->mask + 1 > KIDS_CAP_MIN && n->nkids * 8 < t->mask + 1)
		(void)kids_rebuild(n, kids_cap_for(n->nkids));
}

/* ---- nodes and messages (writer side, under r->lock) ---- */

static void node_free_cb(struct rcu_head *head)
{
	struct rnode *n = caa_container_of(head, struct rnode, rcu);

	assert(!n->kids && !n->msg);
	free(n);
}

static void drop_cb(struct rcu_head *head)
{
	struct rdrop *d = caa_container_of(head, struct rdrop, rcu);

	d->release(d->msg);
	free(d);
}

/* Unlinks n and every ancestor left with no message and no child. */
static void prune(struct retain_store *r, struct rnode *n)
{
	while (n != r->root && !n->msg && n->nkids == 0) {
		struct rnode *p = n->parent;

		kids_del(p, n);
		urcu_qsbr_call_rcu(&n->rcu, node_free_cb);
		atomic_fetch_sub_explicit(&r->nnodes, 1, memory_order_relaxed);
		n = p;
	}
}

static struct rnode *child_get(struct retain_store *r, struct rnode *n,
			       const char *s, uint32_t len, bool create)
{
	uint64_t h = level_hash(r->seed, s, len);
	struct rnode *c = tab_find(n->kids, h, s, len);

	if (c || !create)
		return c;
	c = calloc(1, sizeof(*c) + len);
	if (!c)
		return NULL;
	c->parent = n;
	c->h = h;
	c->len = len;
	memcpy(c->name, s, len);
	if (kids_add(n, c) != 0) {
		free(c); /* never published */
		return NULL;
	}
	atomic_fetch_add_explicit(&r->nnodes, 1, memory_order_relaxed);
	return c;
}

static struct rnode *path_get(struct retain_store *r, const char *topic,
			      size_t len, bool create)
{
	struct rnode *n = r->root;
	size_t pos = 0;

	for (;;) {
		const char *slash = memchr(topic + pos, '/', len - pos);
		size_t end = slash ? (size_t)(slash - topic) : len;
		struct rnode *c = child_get(r, n, topic + pos,
					    (uint32_t)(end - pos), create);

		if (!c) {
			if (create)
				prune(r, n);
			return NULL;
		}
		n = c;
		if (!slash)
			return n;
		pos = end + 1;
	}
}

/* ---- public ---- */

struct retain_store *retain_new(void (*release)(void *msg))
{
	assert(release);
	struct retain_store *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->root = calloc(1, sizeof(*r->root));
	if (!r->root) {
		free(r);
		return NULL;
	}
	r->release = release;
	if (getrandom(&r->seed, sizeof(r->seed), GRND_NONBLOCK) !=
	    sizeof(r->seed))
		r->seed = (uint64_t)(uintptr_t)r * 0x9e3779b97f4a7c15ull;
	pthread_mutex_init(&r->lock, NULL);
	return r;
}

/* No reader can run: release and free at once, post-order through parent
 * pointers (see gtrie_free). Releases still queued in call_rcu from
 * earlier replacements carry their own callback and run later. */
void retain_free(struct retain_store *r)
{
	if (!r)
		return;
	struct rnode *n = r->root;
	while (n) {
		struct rnode *c = NULL;

		while (!c && n->nkids > 0) {
			/* mask counts down as the cursor; slots above it are
			 * cleared, and nkids reaches 0 at slot 0 at the latest */
			struct rtab *t = n->kids;

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
		struct rnode *p = n->parent;
		if (n->msg)
			r->release(n->msg);
		free(n->kids);
		free(n);
		n = p;
	}
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static size_t topic_depth(const char *s, size_t len)
{
	size_t depth = 1;

	for (size_t i = 0; i < len; i++)
		depth += s[i] == '/';
	return depth;
}

/* Swaps n's message under r->lock; the old one is released after a grace
 * period through d, which the caller allocated up front. */
static void msg_swap(struct retain_store *r, struct rnode *n, void *msg,
		     struct rdrop *d)
{
	void *old = n->msg;

	rcu_assign_pointer(n->msg, msg);
	if (old && !msg)
		atomic_fetch_sub_explicit(&r->count, 1, memory_order_relaxed);
	else if (!old && msg)
		atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
	if (old) {
		d->msg = old;
		d->release = r->release;
		urcu_qsbr_call_rcu(&d->rcu, drop_cb);
	} else {
		free(d);
	}
	if (!msg)
		prune(r, n);
}

int retain_set(struct retain_store *r, const char *topic, size_t len,
	       void *msg)
{
	assert(r && topic);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	assert(urcu_qsbr_read_ongoing()); /* call_rcu needs an online thread */
	if (topic_depth(topic, len) > TRIE_LEVELS_MAX)
		return -1;
	/* Allocated before touching the tree so a failure changes nothing. */
	struct rdrop *d = malloc(sizeof(*d));
	if (!d)
		return -1;
	pthread_mutex_lock(&r->lock);
	struct rnode *n = path_get(r, topic, len, msg != NULL);
	if (n)
		msg_swap(r, n, msg, d);
	pthread_mutex_unlock(&r->lock);
	if (!n)
		free(d);
	return n || !msg ? 0 : -1;
}

/* One level of the walk: a cursor over one node's table. */
struct rframe {
	const struct rtab *t;
	uint32_t slot;
	uint32_t i;	  /* filter levels consumed by the children */
	bool subtree;	  /* '#': every descendant matches */
	bool skip_dollar; /* first level under a wildcard: 4.7.2 */
};

struct rwalk {
	const struct levels *lv;
	const char *filter;
	retain_match_cb cb;
	void *ctx;
	uint32_t sp;
	struct rframe st[TRIE_LEVELS_MAX + 1];
};

static void report(struct rwalk *w, const struct rnode *n)
{
	void *m = rcu_dereference(n->msg);

	if (m)
		w->cb(w->ctx, m);
}

static void push(struct rwalk *w, const struct rnode *n, uint32_t i,
		 bool subtree)
{
	const struct rtab *t = rcu_dereference(n->kids);

	if (!t)
		return;
	/* A frame is pushed only for a node deeper than the node of every
	 * frame below it, and nodes are at most TRIE_LEVELS_MAX deep. */
	assert(w->sp < TRIE_LEVELS_MAX + 1);
	w->st[w->sp++] = (struct rframe){t, 0, i, subtree, i == 0};
}

/* Arrives at n with i filter levels consumed: follows literal levels
 * down, and leaves a cursor behind at the first wildcard. */
static void visit(struct rwalk *w, const struct rnode *n, uint32_t i)
{
	const struct levels *lv = w->lv;

	for (; n; i++) {
		if (i == lv->n) {
			report(w, n);
			return;
		}
		const char *s = w->filter + lv->off[i];
		if (is_wild(s, lv->len[i], '#')) {
			report(w, n); /* the parent level; root has no msg */
			push(w, n, i, true);
			return;
		}
		if (is_wild(s, lv->len[i], '+')) {
			push(w, n, i, false);
			return;
		}
		n = tab_find(rcu_dereference(n->kids), lv->h[i], s, lv->len[i]);
	}
}

static const struct rnode *frame_next(struct rframe *f)
{
	while (f->slot <= f->t->mask) {
		const struct rnode *c = rcu_dereference(f->t->slot[f->slot]);

		f->slot++;
		if (c && c != TOMB &&
		    !(f->skip_dollar && c->len > 0 && c->name[0] == '$'))
			return c;
	}
	return NULL;
}

void retain_match(struct retain_store *r, const char *filter, size_t len,
		  retain_match_cb cb, void *ctx)
{
	assert(r && filter && cb);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	assert(urcu_qsbr_read_ongoing()); /* registered and online */
	struct levels lv;
	struct rwalk w = {.lv = &lv, .filter = filter, .cb = cb, .ctx = ctx};

	/* Deeper filters are refused at SUBSCRIBE (TRIE_TOO_DEEP). */
	levels_split(&lv, r->seed, filter, len);
	if (lv.truncated)
		return;
	visit(&w, r->root, 0);
	while (w.sp) {
		struct rframe *f = &w.st[w.sp - 1];
		const struct rnode *c = frame_next(f);

		if (!c) {
			w.sp--;
		} else if (f->subtree) {
			report(&w, c);
			push(&w, c, f->i + 1, true);
		} else {
			visit(&w, c, f->i + 1);
		}
	}
}

size_t retain_count(const struct retain_store *r)
{
	assert(r);
	return atomic_load_explicit(&r->count, memory_order_relaxed);
}

size_t retain_node_count(const struct retain_store *r)
{
	assert(r);
	return atomic_load_explicit(&r->nnodes, memory_order_relaxed);
}
