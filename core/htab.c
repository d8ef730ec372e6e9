/* Intrusive chained hash table (see htab.h). */
#include "core/htab.h"

#include <assert.h>
#include <stdlib.h>

#define HTAB_BUCKETS_MIN 16u

static_assert((HTAB_BUCKETS_MIN & (HTAB_BUCKETS_MIN - 1)) == 0,
	      "power of two");

struct htab_link *htab_find(const struct htab *t, uint64_t hash,
			    const void *key, size_t len, htab_eq_cb eq)
{
	assert(t && eq);
	if (!t->bucket)
		return NULL;
	struct htab_link *l = t->bucket[hash & t->mask];

	while (l && (l->hash != hash || !eq(l, key, len)))
		l = l->next;
	return l;
}

/* n buckets (a power of two, more than now); the stored hashes spare
 * hashing the keys again. */
static int htab_resize(struct htab *t, size_t n)
{
	struct htab_link **b = n > SIZE_MAX / sizeof(*b) ? NULL
							 : calloc(n, sizeof(*b));

	if (!b)
		return -1;
	for (size_t i = 0; t->bucket && i <= t->mask; i++) {
		struct htab_link *l = t->bucket[i], *next;

		for (; l; l = next) {
			next = l->next;
			l->next = b[l->hash & (n - 1)];
			b[l->hash & (n - 1)] = l;
		}
	}
	free(t->bucket);
	t->bucket = b;
	t->mask = n - 1;
	return 0;
}

static int htab_grow(struct htab *t)
{
	return htab_resize(t, t->bucket ? (t->mask + 1) * 2 : HTAB_BUCKETS_MIN);
}

int htab_reserve(struct htab *t, size_t n)
{
	assert(t);
	size_t want = HTAB_BUCKETS_MIN;
	while (want < n && want <= SIZE_MAX / 2)
		want *= 2;
	if (t->bucket && want <= t->mask + 1)
		return 0;
	return htab_resize(t, want);
}

int htab_insert(struct htab *t, struct htab_link *l, uint64_t hash)
{
	assert(t && l);
	if ((!t->bucket || t->count > t->mask) && htab_grow(t) < 0)
		return -1;
	struct htab_link **head = &t->bucket[hash & t->mask];

	l->hash = hash;
	l->next = *head;
	*head = l;
	t->count++;
	return 0;
}

void htab_remove(struct htab *t, struct htab_link *l)
{
	assert(t && l && t->count > 0);
	struct htab_link **pp = &t->bucket[l->hash & t->mask];

	while (*pp != l) {
		assert(*pp); /* l is not in t */
		pp = &(*pp)->next;
	}
	*pp = l->next;
	t->count--;
}

void htab_fini(struct htab *t, void (*free_cb)(struct htab_link *l))
{
	assert(t && (free_cb || t->count == 0));
	for (size_t i = 0; t->count && i <= t->mask; i++) {
		struct htab_link *l = t->bucket[i], *next;

		for (; l; l = next) {
			next = l->next;
			t->count--;
			free_cb(l);
		}
	}
	free(t->bucket);
	*t = (struct htab){0};
}
