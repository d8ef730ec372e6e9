/* Global trie: shard masks, the same matching rules as the per-shard trie,
 * pruning, and readers racing a writer under QSBR. */
#include "core/gtrie.h"
#include "core/topic.h"
#include "core/trie.h"
#include "runner.h"
#include "topic_model.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <urcu/urcu-qsbr.h>

#define BIT(s) (UINT64_C(1) << (s))

/* gtrie calls need a registered, online thread; the runner's is neither.
 * The barrier at the end runs the pending frees so ASan sees them. */
static void rcu_enter(void)
{
	urcu_qsbr_register_thread();
}

static void rcu_leave(void)
{
	urcu_qsbr_barrier();
	urcu_qsbr_unregister_thread();
}

static int add(struct gtrie *g, const char *f, unsigned shard)
{
	return gtrie_add(g, f, strlen(f), shard);
}

static int del(struct gtrie *g, const char *f, unsigned shard)
{
	return gtrie_remove(g, f, strlen(f), shard);
}

static uint64_t match(const struct gtrie *g, const char *topic)
{
	return gtrie_match(g, topic, strlen(topic));
}

TEST(gtrie_mask_is_union_of_matching_filters)
{
	rcu_enter();
	struct gtrie *g = gtrie_new();

	CHECK_EQ(add(g, "sport/tennis/player1", 0), 0);
	CHECK_EQ(add(g, "sport/tennis/+", 1), 0);
	CHECK_EQ(add(g, "sport/#", 2), 0);
	CHECK_EQ(add(g, "#", 63), 0);
	CHECK_EQ(add(g, "+/+", 4), 0);
	CHECK_EQ(match(g, "sport/tennis/player1"), BIT(0) | BIT(1) | BIT(2) | BIT(63));
	CHECK_EQ(match(g, "sport/tennis/player2"), BIT(1) | BIT(2) | BIT(63));
	CHECK_EQ(match(g, "sport"), BIT(2) | BIT(63));
	CHECK_EQ(match(g, "sport/golf"), BIT(2) | BIT(63) | BIT(4));
	CHECK_EQ(match(g, "news"), BIT(63));
	CHECK_EQ(match(g, "/"), BIT(63) | BIT(4));
	gtrie_free(g);
	rcu_leave();
}

TEST(gtrie_add_and_remove_are_idempotent_per_shard)
{
	rcu_enter();
	struct gtrie *g = gtrie_new();

	CHECK_EQ(add(g, "a/+", 3), 0);
	CHECK_EQ(add(g, "a/+", 3), 0);
	CHECK_EQ(add(g, "a/+", 5), 0);
	CHECK_EQ(match(g, "a/b"), BIT(3) | BIT(5));
	CHECK_EQ(del(g, "a/+", 3), 0);
	CHECK_EQ(match(g, "a/b"), BIT(5));
	CHECK_EQ(del(g, "a/+", 3), 0); /* absent shard: no-op */
	CHECK_EQ(del(g, "x/y", 3), 0); /* absent filter: no-op */
	CHECK_EQ(match(g, "a/b"), BIT(5));
	CHECK_EQ(gtrie_node_count(g), 2);
	CHECK_EQ(del(g, "a/+", 5), 0);
	CHECK_EQ(match(g, "a/b"), 0);
	CHECK_EQ(gtrie_node_count(g), 0);
	gtrie_free(g);
	rcu_leave();
}

/* 4.7.2, with each filter on its own shard. */
TEST(gtrie_spec_dollar_topics_skip_leading_wildcards)
{
	rcu_enter();
	struct gtrie *g = gtrie_new();

	CHECK_EQ(add(g, "#", 0), 0);
	CHECK_EQ(add(g, "+/monitor/Clients", 1), 0);
	CHECK_EQ(add(g, "$SYS/#", 2), 0);
	CHECK_EQ(add(g, "$SYS/monitor/+", 3), 0);
	CHECK_EQ(add(g, "+/#", 4), 0);
	CHECK_EQ(match(g, "$SYS/monitor/Clients"), BIT(2) | BIT(3));
	CHECK_EQ(match(g, "$SYS"), BIT(2));
	CHECK_EQ(match(g, "sys/monitor/Clients"), BIT(0) | BIT(1) | BIT(4));
	CHECK_EQ(match(g, "a/$SYS"), BIT(0) | BIT(4));
	gtrie_free(g);
	rcu_leave();
}

TEST(gtrie_filter_deeper_than_levels_max_is_refused)
{
	rcu_enter();
	struct gtrie *g = gtrie_new();
	char *ok = deep_filter(TRIE_LEVELS_MAX, "#");
	char *deep = deep_filter(TRIE_LEVELS_MAX + 1, "#");
	char *topic_deep = deep_filter(TRIE_LEVELS_MAX * 2, NULL);

	CHECK_EQ(add(g, ok, 1), 0);
	CHECK_EQ(add(g, deep, 2), -1);
	CHECK_EQ(del(g, deep, 2), -1);
	CHECK_EQ(gtrie_node_count(g), TRIE_LEVELS_MAX);
	CHECK_EQ(add(g, "l/#", 3), 0);
	/* a deeper topic still meets every '#' within the bound */
	CHECK_EQ(match(g, topic_deep), BIT(1) | BIT(3));
	CHECK_EQ(del(g, ok, 1), 0);
	CHECK_EQ(del(g, "l/#", 3), 0);
	CHECK_EQ(gtrie_node_count(g), 0);
	free(ok);
	free(deep);
	free(topic_deep);
	gtrie_free(g);
	rcu_leave();
}

static uint64_t model_mask(const struct gen *gn, uint64_t held[256],
			   const char *tp)
{
	uint64_t m = 0;

	for (int i = 0; i < gn->nf; i++)
		if (held[i] && topic_matches(gn->filters[i],
					     strlen(gn->filters[i]), tp,
					     strlen(tp)))
			m |= held[i];
	return m;
}

TEST(gtrie_agrees_with_topic_matches_on_every_small_pair)
{
	static struct gen gn;
	static uint64_t held[256];
	rcu_enter();
	struct gtrie *g = gtrie_new();

	gen_all(&gn);
	for (int i = 0; i < gn.nf; i++) {
		held[i] = BIT(i % 64);
		CHECK_EQ(add(g, gn.filters[i], (unsigned)(i % 64)), 0);
	}
	for (int k = 0; k < gn.nt; k++) {
		uint64_t want = model_mask(&gn, held, gn.topics[k]);
		uint64_t got = match(g, gn.topics[k]);
		if (got != want) {
			fprintf(stderr, "  topic \"%s\": %#llx != %#llx\n",
				gn.topics[k], (unsigned long long)got,
				(unsigned long long)want);
			*test_failed_ = 1;
		}
	}
	for (int i = 0; i < gn.nf; i++)
		CHECK_EQ(del(g, gn.filters[i], (unsigned)(i % 64)), 0);
	CHECK_EQ(gtrie_node_count(g), 0);
	gtrie_free(g);
	rcu_leave();
}

TEST(gtrie_random_churn_agrees_with_model_and_prunes_to_empty)
{
	static struct gen gn;
	static uint64_t held[256];
	uint64_t rng = 0x2545f4914f6cdd1dull;
	rcu_enter();
	struct gtrie *g = gtrie_new();

	gen_all(&gn);
	memset(held, 0, sizeof(held));
	for (int op = 0; op < 20000; op++) {
		int f = (int)(rng_next(&rng) % (uint64_t)gn.nf);
		unsigned s = (unsigned)(rng_next(&rng) % 4);
		if (rng_next(&rng) % 3) {
			CHECK_EQ(add(g, gn.filters[f], s), 0);
			held[f] |= BIT(s);
		} else {
			CHECK_EQ(del(g, gn.filters[f], s), 0);
			held[f] &= ~BIT(s);
		}
		if (op % 97 == 0) {
			const char *tp = gn.topics[rng_next(&rng) % (uint64_t)gn.nt];
			CHECK_EQ(match(g, tp), model_mask(&gn, held, tp));
		}
		if (op % 1000 == 0)
			urcu_qsbr_quiescent_state(); /* let frees happen */
	}
	for (int f = 0; f < gn.nf; f++)
		for (unsigned s = 0; s < 4; s++)
			if (held[f] & BIT(s))
				CHECK_EQ(del(g, gn.filters[f], s), 0);
	CHECK_EQ(gtrie_node_count(g), 0);
	gtrie_free(g);
	rcu_leave();
}

/* Topic levels are hashed while scanning for '/', a word at a time: they
 * must hash as the filter levels do for every length and offset. */
TEST(gtrie_levels_of_every_length_and_alignment_match)
{
	char buf[64];
	rcu_enter();
	struct gtrie *g = gtrie_new();

	for (int c = 0; c < 9; c++)
		for (int a = 0; a < 18; a++)
			for (int b = 0; b < 18; b++) {
				aligned_topic(buf, c, a, b);
				CHECK_EQ(add(g, buf, (unsigned)(a * 18 + b) % 64), 0);
			}
	for (int c = 0; c < 9; c++)
		for (int a = 0; a < 18; a++)
			for (int b = 0; b < 18; b++) {
				aligned_topic(buf, c, a, b);
				CHECK_EQ(match(g, buf), BIT((a * 18 + b) % 64));
			}
	gtrie_free(g);
	rcu_leave();
}

/* Fan-in telemetry: thousands of siblings, removed in two passes so the
 * table is tombstoned, shrunk and rebuilt under the surviving children. */
TEST(gtrie_wide_level_with_5000_children_finds_each_child)
{
	enum { N = 5000 };
	char f[64];
	rcu_enter();
	struct gtrie *g = gtrie_new();

	for (int i = 0; i < N; i++) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(add(g, f, (unsigned)(i % 64)), 0);
	}
	CHECK_EQ(gtrie_node_count(g), 1 + 2 * N);
	for (int i = 0; i < N; i++) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(match(g, f), BIT(i % 64));
	}
	for (int i = 1; i < N; i += 2) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(del(g, f, (unsigned)(i % 64)), 0);
	}
	for (int i = 0; i < N; i++) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(match(g, f), i % 2 ? 0 : BIT(i % 64));
	}
	for (int i = 0; i < N; i += 2) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(del(g, f, (unsigned)(i % 64)), 0);
	}
	CHECK_EQ(gtrie_node_count(g), 0);
	gtrie_free(g);
	rcu_leave();
}

TEST(gtrie_new_and_free_many_times_leaks_nothing)
{
	char f[64];
	rcu_enter();
	for (int round = 0; round < 200; round++) {
		struct gtrie *g = gtrie_new();

		CHECK(g != NULL);
		for (int i = 0; i < 50; i++) {
			snprintf(f, sizeof(f), "r/%d/+/%d/#", i % 7, i);
			CHECK_EQ(add(g, f, (unsigned)(round % 64)), 0);
		}
		for (int i = 0; i < 50; i += 3) {
			snprintf(f, sizeof(f), "r/%d/+/%d/#", i % 7, i);
			CHECK_EQ(del(g, f, (unsigned)(round % 64)), 0);
		}
		gtrie_free(g); /* populated: frees what is still linked */
		urcu_qsbr_quiescent_state();
	}
	gtrie_free(NULL);
	rcu_leave();
}

/* ---- readers racing a writer ---- */

enum { READERS = 3, CHURN_IDS = 1500, STABLE_BITS = 0xff };

struct race {
	struct gtrie *g;
	atomic_bool stop;
	atomic_long errors;
	atomic_long matches;
};

/* What stable filters promise, whatever the churn does: churn filters only
 * use shards 8..62 and never start with "$SYS", and shard 63 is never used. */
static long reader_check(const struct gtrie *g)
{
	long bad = 0;
	uint64_t m;

	m = match(g, "dev/42/temp");
	bad += (m & STABLE_BITS) != (BIT(0) | BIT(1)) || (m & BIT(63));
	m = match(g, "$SYS/broker/load");
	bad += m != BIT(2);
	m = match(g, "dev/7/x/y");
	bad += (m & STABLE_BITS) != BIT(3) || (m & BIT(63));
	m = match(g, "quiet/topic");
	bad += (m & STABLE_BITS) != 0 || (m & BIT(63));
	return bad;
}

static void *reader_main(void *arg)
{
	struct race *r = arg;
	long n = 0, bad = 0;

	urcu_qsbr_register_thread();
	while (!atomic_load(&r->stop)) {
		for (int k = 0; k < 32; k++, n++)
			bad += reader_check(r->g);
		urcu_qsbr_quiescent_state(); /* once per "loop turn" */
	}
	urcu_qsbr_unregister_thread();
	atomic_fetch_add(&r->errors, bad);
	atomic_fetch_add(&r->matches, n);
	return NULL;
}

static void churn_filter(char *f, size_t size, int kind, int id)
{
	switch (kind) {
	case 0: snprintf(f, size, "dev/%d/temp", id); break;
	case 1: snprintf(f, size, "dev/%d/+/x", id); break;
	case 2: snprintf(f, size, "+/%d", id); break;
	default: snprintf(f, size, "dev/42/temp/%d/#", id); break;
	}
}

/* Adds then removes every churn filter, visiting ids in a different order
 * each way, plus root-level wildcards so root pointers flip as well. */
static void churn_round(struct gtrie *g, int round)
{
	char f[64];

	for (int pass = 0; pass < 2; pass++) {
		for (int j = 0; j < CHURN_IDS; j++) {
			int id = pass ? (j * 7 + round) % CHURN_IDS : j;
			unsigned shard = 8 + (unsigned)(id % 55);
			for (int kind = 0; kind < 4; kind++) {
				churn_filter(f, sizeof(f), kind, id);
				if (id == 42 && kind == 0)
					continue; /* dev/42/temp is stable */
				if (pass == 0)
					(void)add(g, f, shard);
				else
					(void)del(g, f, shard);
			}
			if (j % 64 == 0)
				urcu_qsbr_quiescent_state();
		}
		if (pass == 0) {
			(void)add(g, "#", 60);
			(void)add(g, "+/+/+", 61);
		} else {
			(void)del(g, "#", 60);
			(void)del(g, "+/+/+", 61);
		}
	}
}

TEST(gtrie_concurrent_readers_always_see_stable_filters)
{
	static struct race r;
	pthread_t th[READERS];
	rcu_enter();

	r.g = gtrie_new();
	atomic_store(&r.stop, false);
	atomic_store(&r.errors, 0);
	atomic_store(&r.matches, 0);
	CHECK_EQ(add(r.g, "dev/42/temp", 0), 0);
	CHECK_EQ(add(r.g, "dev/+/temp", 1), 0);
	CHECK_EQ(add(r.g, "$SYS/#", 2), 0);
	CHECK_EQ(add(r.g, "dev/7/#", 3), 0);
	size_t stable_nodes = gtrie_node_count(r.g);
	CHECK_EQ(reader_check(r.g), 0);
	for (int i = 0; i < READERS; i++)
		CHECK_EQ(pthread_create(&th[i], NULL, reader_main, &r), 0);
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int round = 0; round < 2 || elapsed_ms(&t0) < 300; round++)
		churn_round(r.g, round);
	atomic_store(&r.stop, true);
	urcu_qsbr_thread_offline(); /* never block while online */
	for (int i = 0; i < READERS; i++)
		pthread_join(th[i], NULL);
	urcu_qsbr_thread_online();
	CHECK_EQ(atomic_load(&r.errors), 0);
	CHECK(atomic_load(&r.matches) > 0);
	CHECK_EQ(gtrie_node_count(r.g), stable_nodes);
	CHECK_EQ(reader_check(r.g), 0);
	CHECK_EQ(del(r.g, "dev/42/temp", 0), 0);
	CHECK_EQ(del(r.g, "dev/+/temp", 1), 0);
	CHECK_EQ(del(r.g, "$SYS/#", 2), 0);
	CHECK_EQ(del(r.g, "dev/7/#", 3), 0);
	CHECK_EQ(gtrie_node_count(r.g), 0);
	rcu_leave(); /* every call_rcu free has run */
	gtrie_free(r.g);
}
