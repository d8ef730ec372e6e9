/* Topic levels (see level.h). */
#include "core/level.h"

#include "core/hash.h"

#include <assert.h>
#include <stdlib.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "level hashing reads words little-endian"
#endif

#define SLASHES 0x2f2f2f2f2f2f2f2full
#define BYTES_01 0x0101010101010101ull
#define BYTES_80 0x8080808080808080ull

struct level_node level_tomb;

uint64_t level_seed(const void *salt)
{
	return hash_bytes(&salt, sizeof(salt));
}

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

/* 8 bytes per multiply. */
uint64_t level_hash(uint64_t seed, const char *s, size_t len)
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

/* A word at a time: a word without '/' feeds the hash, the word holding
 * the next '/' ends the level. */
void level_split(struct levels *lv, uint64_t seed, const char *s, size_t len)
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

size_t level_count(const char *s, size_t len)
{
	size_t depth = 1;

	for (size_t i = 0; i < len; i++)
		depth += s[i] == '/';
	return depth;
}

uint32_t level_cap_for(uint32_t live)
{
	uint32_t cap = LEVEL_CAP_MIN;

	while (cap < live * 2)
		cap *= 2;
	return cap;
}

/* ---- RCU child table ---- */

/* Writer: puts c in the first free or tombstoned slot of its probe path.
 * c's key is known absent. */
static void tab_place(struct level_tab *t, struct level_node *c)
{
	uint32_t i = (uint32_t)c->h & t->mask;

	while (t->slot[i] && t->slot[i] != LEVEL_TOMB)
		i = (i + 1) & t->mask;
	if (!t->slot[i])
		t->used++;
	rcu_assign_pointer(t->slot[i], c);
}

static void tab_free_cb(struct rcu_head *head)
{
	free(caa_container_of(head, struct level_tab, rcu));
}

/* Replaces n's table by a fresh one of `cap` slots (0: none) holding the
 * same children; readers still in the old one finish there. */
static int kids_rebuild(struct level_node *n, uint32_t cap)
{
	struct level_tab *old = n->kids, *t = NULL;

	if (cap) {
		t = calloc(1, sizeof(*t) + cap * sizeof(t->slot[0]));
		if (!t)
			return -1;
		t->mask = cap - 1;
		for (uint32_t i = 0; old && i <= old->mask; i++)
			if (old->slot[i] && old->slot[i] != LEVEL_TOMB)
				tab_place(t, old->slot[i]);
	}
	rcu_assign_pointer(n->kids, t);
	if (old)
		urcu_qsbr_call_rcu(&old->rcu, tab_free_cb);
	return 0;
}

int level_kids_add(struct level_node *n, struct level_node *c)
{
	struct level_tab *t = n->kids;

	if ((!t || (t->used + 1) * 4 > (t->mask + 1) * 3) &&
	    kids_rebuild(n, level_cap_for(n->nkids + 1)) != 0)
		return -1;
	tab_place(n->kids, c);
	n->nkids++;
	return 0;
}

void level_kids_del(struct level_node *n, const struct level_node *c)
{
	struct level_tab *t = n->kids;
	uint32_t i = (uint32_t)c->h & t->mask;

	while (t->slot[i] != c)
		i = (i + 1) & t->mask;
	rcu_assign_pointer(t->slot[i], LEVEL_TOMB);
	n->nkids--;
	if (n->nkids == 0)
		(void)kids_rebuild(n, 0); /* freeing cannot fail */
	else if (t->mask + 1 > LEVEL_CAP_MIN && n->nkids * 8 < t->mask + 1)
		(void)kids_rebuild(n, level_cap_for(n->nkids)); /* may stay */
}

struct level_node *level_kids_take(struct level_node *n)
{
	struct level_node *c = NULL;

	while (!c && n->nkids > 0) {
		/* mask counts down as the cursor; slots above it are
		 * cleared, and nkids reaches 0 at slot 0 at the latest */
		struct level_tab *t = n->kids;

		c = t->slot[t->mask];
		t->slot[t->mask] = NULL;
		if (c == LEVEL_TOMB)
			c = NULL;
		else if (c)
			n->nkids--;
		if (t->mask > 0)
			t->mask--;
	}
	return c;
}
