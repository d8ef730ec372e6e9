/* core/htab: the intrusive chained table behind the client-id registry,
 * sessions by id, ACL users and identities, password entries. */
#include "core/htab.h"
#include "runner.h"

#include <stdio.h>
#include <stdlib.h>

struct item {
	int freed;
	struct htab_link link;
	size_t len;
	char key[24];
};

static bool item_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct item *it = htab_entry(l, const struct item, link);

	return it->len == len && !memcmp(it->key, key, len);
}

static struct item *item_find(const struct htab *t, uint64_t h,
			      const char *key)
{
	return htab_entry(htab_find(t, h, key, strlen(key), item_eq_cb),
			  struct item, link);
}

static uint64_t item_hash(const struct item *it)
{
	return hash_bytes(it->key, it->len);
}

static struct item *items_new(size_t n)
{
	struct item *v = calloc(n, sizeof(*v));

	for (size_t i = 0; v && i < n; i++)
		v[i].len = (size_t)snprintf(v[i].key, sizeof(v[i].key),
					    "client-%zu", i);
	return v;
}

static void item_free_cb(struct htab_link *l)
{
	htab_entry(l, struct item, link)->freed++;
}

TEST(htab_zeroed_table_is_empty)
{
	struct htab t = {0};

	CHECK(!item_find(&t, hash_bytes("a", 1), "a"));
	htab_fini(&t, NULL);
	CHECK(!t.bucket);
}

TEST(htab_insert_find_remove)
{
	struct htab t = {0};
	struct item *v = items_new(3);

	for (int i = 0; i < 3; i++)
		CHECK_EQ(htab_insert(&t, &v[i].link, item_hash(&v[i])), 0);
	CHECK_EQ(t.count, 3);
	CHECK(item_find(&t, item_hash(&v[1]), "client-1") == &v[1]);
	CHECK(!item_find(&t, hash_bytes("client-3", 8), "client-3"));
	/* The hash of one entry with the key of another: eq decides. */
	CHECK(!item_find(&t, item_hash(&v[1]), "client-2"));
	htab_remove(&t, &v[1].link);
	CHECK_EQ(t.count, 2);
	CHECK(!item_find(&t, item_hash(&v[1]), "client-1"));
	CHECK(item_find(&t, item_hash(&v[0]), "client-0") == &v[0]);
	CHECK(item_find(&t, item_hash(&v[2]), "client-2") == &v[2]);
	/* Back in after removal. */
	CHECK_EQ(htab_insert(&t, &v[1].link, item_hash(&v[1])), 0);
	CHECK(item_find(&t, item_hash(&v[1]), "client-1") == &v[1]);
	htab_fini(&t, item_free_cb);
	CHECK(v[0].freed == 1 && v[1].freed == 1 && v[2].freed == 1);
	CHECK_EQ(t.count, 0);
	free(v);
}

/* Buckets double as entries come (a power of two, never more entries
 * than buckets), and every entry stays reachable across each rehash. */
TEST(htab_grows_by_doubling_and_keeps_every_entry)
{
	enum { N = 20000 };
	struct htab t = {0};
	struct item *v = items_new(N);
	size_t grows = 0, lost = 0;

	for (size_t i = 0; i < N; i++) {
		size_t before = t.bucket ? t.mask + 1 : 0;

		CHECK_EQ(htab_insert(&t, &v[i].link, item_hash(&v[i])), 0);
		if (t.mask + 1 != before) {
			grows++;
			CHECK(before == 0 || t.mask + 1 == before * 2);
			for (size_t j = 0; j <= i; j++)
				lost += item_find(&t, item_hash(&v[j]),
						  v[j].key) != &v[j];
		}
		CHECK(t.count <= t.mask + 1);
	}
	CHECK_EQ(lost, 0);
	CHECK(grows >= 10);
	CHECK(((t.mask + 1) & t.mask) == 0);
	for (size_t i = 1; i < N; i += 2)
		htab_remove(&t, &v[i].link);
	CHECK_EQ(t.count, N / 2);
	for (size_t i = 0; i < N; i++)
		lost += item_find(&t, item_hash(&v[i]), v[i].key) !=
			(i % 2 ? NULL : &v[i]);
	CHECK_EQ(lost, 0);
	htab_fini(&t, item_free_cb);
	for (size_t i = 0; i < N; i++)
		lost += v[i].freed != (i % 2 ? 0 : 1);
	CHECK_EQ(lost, 0);
	free(v);
}

TEST(htab_reserve_sizes_once_and_keeps_entries)
{
	enum { N = 5000 };
	struct htab t = {0};
	struct item *v = items_new(N);
	size_t lost = 0;

	CHECK_EQ(htab_reserve(&t, 3000), 0);
	CHECK_EQ(t.mask + 1, 4096);
	CHECK_EQ(t.count, 0);
	for (size_t i = 0; i < 1000; i++)
		CHECK_EQ(htab_insert(&t, &v[i].link, item_hash(&v[i])), 0);
	CHECK_EQ(t.mask + 1, 4096); /* no doubling below the reserve */
	CHECK_EQ(htab_reserve(&t, 100), 0); /* never shrinks */
	CHECK_EQ(t.mask + 1, 4096);
	CHECK_EQ(htab_reserve(&t, 10000), 0); /* grows with what it holds */
	CHECK_EQ(t.mask + 1, 16384);
	for (size_t i = 1000; i < N; i++)
		CHECK_EQ(htab_insert(&t, &v[i].link, item_hash(&v[i])), 0);
	for (size_t i = 0; i < N; i++)
		lost += item_find(&t, item_hash(&v[i]), v[i].key) != &v[i];
	CHECK_EQ(lost, 0);
	htab_fini(&t, item_free_cb);
	free(v);
}

/* Keys whose hashes are all equal share one chain: found by key, removed
 * from its head, middle and tail, and still together after growing. */
TEST(htab_equal_hashes_share_a_chain_and_compare_keys)
{
	enum { N = 100 };
	const uint64_t h = 0x5eed;
	struct htab t = {0};
	struct item *v = items_new(N);
	size_t lost = 0;

	for (size_t i = 0; i < N; i++)
		CHECK_EQ(htab_insert(&t, &v[i].link, h), 0);
	CHECK(t.mask + 1 >= N);
	for (size_t i = 0; i < N; i++)
		lost += item_find(&t, h, v[i].key) != &v[i];
	CHECK(!item_find(&t, h, "client-100"));
	htab_remove(&t, &v[N - 1].link); /* chain head: inserted last */
	htab_remove(&t, &v[N / 2].link);
	htab_remove(&t, &v[0].link);	   /* chain tail */
	for (size_t i = 0; i < N; i++) {
		bool gone = i == 0 || i == N / 2 || i == N - 1;

		lost += item_find(&t, h, v[i].key) != (gone ? NULL : &v[i]);
	}
	CHECK_EQ(lost, 0);
	CHECK_EQ(t.count, N - 3);
	htab_fini(&t, item_free_cb);
	free(v);
}

struct by_id {
	uint64_t id;
	struct htab_link link;
};

static bool by_id_eq_cb(const struct htab_link *l, const void *key,
			size_t len)
{
	uint64_t id;

	memcpy(&id, key, sizeof(id));
	return len == sizeof(id) && htab_entry(l, const struct by_id, link)->id == id;
}

/* u64 keys (session ids): sequential ids, hashed as their 8 bytes. */
TEST(htab_u64_keys)
{
	enum { N = 5000 };
	struct htab t = {0};
	struct by_id *v = calloc(N, sizeof(*v));
	size_t lost = 0;

	for (uint64_t i = 0; i < N; i++) {
		v[i].id = i + 1;
		CHECK_EQ(htab_insert(&t, &v[i].link,
				     hash_bytes(&v[i].id, sizeof(v[i].id))),
			 0);
	}
	for (uint64_t id = 0; id <= N + 1; id++) {
		struct htab_link *l =
			htab_find(&t, hash_bytes(&id, sizeof(id)), &id,
				  sizeof(id), by_id_eq_cb);

		lost += htab_entry(l, struct by_id, link) !=
			(id >= 1 && id <= N ? &v[id - 1] : NULL);
	}
	CHECK_EQ(lost, 0);
	for (size_t i = 0; i < N; i++)
		htab_remove(&t, &v[i].link);
	CHECK_EQ(t.count, 0);
	htab_fini(&t, NULL);
	free(v);
}
