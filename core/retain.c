/* Retained-message store (see retain.h).
 *
 * A tree of topic levels; a node holds the retained message of the topic
 * ending there, or NULL. Children are found through an open-addressing
 * table per node, the same RCU table as gtrie.c's (core/level.h; gtrie.c's
 * header comment has the reader/writer rules): slots go NULL -> child ->
 * tombstone -> child, tables are rebuilt aside and swapped whole, and
 * unlinked tables, nodes and replaced messages go through call_rcu.
 *
 * retain_match walks the tree guided by the filter: a literal level is one
 * table lookup, '+' iterates one node's children, '#' iterates a whole
 * subtree. The walk keeps an explicit stack of table cursors, one per tree
 * depth, bounded because stored topics have at most TRIE_LEVELS_MAX
 * levels. */
#include "core/retain.h"

#include "core/level.h"
#include "core/trie.h" /* TRIE_LEVELS_MAX */

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TOPIC_LEN_MAX 65535u

struct rnode {
	/* read by readers */
	struct level_node lv; /* first: the table holds &lv */
	void *msg;
	/* writer only */
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

_Static_assert(offsetof(struct rnode, lv) == 0, "a table slot is its node");

static struct rnode *tab_find(const struct level_tab *t, uint64_t h,
			      const char *s, uint32_t len)
{
	return (struct rnode *)level_tab_find(t, h, s, len,
					      offsetof(struct rnode, name));
}

/* ---- nodes and messages (writer side, under r->lock) ---- */

static void node_free_cb(struct rcu_head *head)
{
	struct rnode *n = caa_container_of(head, struct rnode, rcu);

	assert(!n->lv.kids && !n->msg);
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
	while (n != r->root && !n->msg && n->lv.nkids == 0) {
		struct rnode *p = n->parent;

		level_kids_del(&p->lv, &n->lv);
		urcu_qsbr_call_rcu(&n->rcu, node_free_cb);
		atomic_fetch_sub_explicit(&r->nnodes, 1, memory_order_relaxed);
		n = p;
	}
}

static struct rnode *child_get(struct retain_store *r, struct rnode *n,
			       const char *s, uint32_t len, bool create)
{
	uint64_t h = level_hash(r->seed, s, len);
	struct rnode *c = tab_find(n->lv.kids, h, s, len);

	if (c || !create)
		return c;
	c = calloc(1, sizeof(*c) + len);
	if (!c)
		return NULL;
	c->parent = n;
	c->lv.h = h;
	c->lv.len = len;
	memcpy(c->name, s, len);
	if (level_kids_add(&n->lv, &c->lv) != 0) {
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
	r->seed = level_seed(r);
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
		struct rnode *c = (struct rnode *)level_kids_take(&n->lv);

		if (c) {
			n = c;
			continue;
		}
		struct rnode *p = n->parent;
		if (n->msg)
			r->release(n->msg);
		free(n->lv.kids);
		free(n);
		n = p;
	}
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* Swaps n's message under r->lock (replacements of one message by
 * another also come without it: msg_replace); the old one is released
 * after a grace period through d, which the caller allocated up front. */
static void msg_swap(struct retain_store *r, struct rnode *n, void *msg,
		     struct rdrop *d)
{
	/* An exchange: a lock-free replacement (msg_replace) may land
	 * between a load and a store. */
	void *old = __atomic_exchange_n(&n->msg, msg, __ATOMIC_ACQ_REL);

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

/* topic's node as readers find it (no lock), or NULL. */
static struct rnode *path_find(struct retain_store *r, const char *topic,
			       size_t len)
{
	struct rnode *n = r->root;
	size_t pos = 0;

	for (;;) {
		const char *slash = memchr(topic + pos, '/', len - pos);
		size_t end = slash ? (size_t)(slash - topic) : len;
		uint32_t l = (uint32_t)(end - pos);

		n = tab_find(rcu_dereference(n->lv.kids),
			     level_hash(r->seed, topic + pos, l), topic + pos, l);
		if (!n || !slash)
			return n;
		pos = end + 1;
	}
}

/* The common retained publish, a new message for a topic that has one,
 * takes no lock: a compare-and-swap of the node's message. It cannot
 * race a clear into a pruned node: the clear (under the lock) leaves
 * NULL, on which this CAS fails and the caller takes the lock; the node
 * is only freed after a grace period, which this online reader holds
 * off. The count does not change: one message replaces another. */
static bool msg_replace(struct rnode *n, void *msg, struct rdrop *d,
			void (*release)(void *msg))
{
	void *old = rcu_dereference(n->msg);

	while (old) {
		if (__atomic_compare_exchange_n(&n->msg, &old, msg, false,
						__ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
			d->msg = old;
			d->release = release;
			urcu_qsbr_call_rcu(&d->rcu, drop_cb);
			return true;
		}
	}
	return false;
}

int retain_set(struct retain_store *r, const char *topic, size_t len,
	       void *msg)
{
	assert(r && topic);
	assert(len >= 1 && len <= TOPIC_LEN_MAX);
	assert(urcu_qsbr_read_ongoing()); /* call_rcu needs an online thread */
	if (level_count(topic, len) > TRIE_LEVELS_MAX)
		return -1;
	/* Allocated before touching the tree so a failure changes nothing. */
	struct rdrop *d = malloc(sizeof(*d));
	if (!d)
		return -1;
	if (msg) {
		struct rnode *n = path_find(r, topic, len);
		if (n && msg_replace(n, msg, d, r->release))
			return 0;
	}
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
	const struct level_tab *t;
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
	const struct level_tab *t = rcu_dereference(n->lv.kids);

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
		if (level_is(s, lv->len[i], '#')) {
			report(w, n); /* the parent level; root has no msg */
			push(w, n, i, true);
			return;
		}
		if (level_is(s, lv->len[i], '+')) {
			push(w, n, i, false);
			return;
		}
		n = tab_find(rcu_dereference(n->lv.kids), lv->h[i], s, lv->len[i]);
	}
}

static const struct rnode *frame_next(struct rframe *f)
{
	while (f->slot <= f->t->mask) {
		const struct level_node *k = rcu_dereference(f->t->slot[f->slot]);
		const struct rnode *c = (const struct rnode *)k;

		f->slot++;
		if (k && k != LEVEL_TOMB &&
		    !(f->skip_dollar && k->len > 0 && c->name[0] == '$'))
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
	level_split(&lv, r->seed, filter, len);
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
