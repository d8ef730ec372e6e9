/* Retained-message store: one message per topic, wildcard lookups with the
 * trie's rules, releases deferred past a grace period, readers racing a
 * writer under QSBR. */
#include "core/retain.h"
#include "core/topic.h"
#include "core/trie.h"
#include "runner.h"
#include "topic_model.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <urcu/urcu-qsbr.h>

enum { MSG_LIVE = 0x11fe, MSG_DEAD = 0xdead };

/* Stand-in for the broker's reference-counted message. */
struct msg {
	int magic;
	int id;
	bool stable;
};

static atomic_long released;

static void msg_release(void *p)
{
	struct msg *m = p;

	m->magic = MSG_DEAD; /* ASan flags any later read; this flags it too */
	free(m);
	atomic_fetch_add(&released, 1);
}

static struct msg *msg_new(int id)
{
	struct msg *m = malloc(sizeof(*m));

	m->magic = MSG_LIVE;
	m->id = id;
	m->stable = false;
	return m;
}

static void rcu_enter(void)
{
	urcu_qsbr_register_thread();
	atomic_store(&released, 0);
}

static void rcu_leave(void)
{
	urcu_qsbr_barrier(); /* run every deferred release */
	urcu_qsbr_unregister_thread();
}

static int set(struct retain_store *r, const char *topic, int id)
{
	struct msg *m = id < 0 ? NULL : msg_new(id);
	int rc = retain_set(r, topic, strlen(topic), m);

	if (rc != 0)
		free(m); /* refused: the reference stayed ours */
	return rc;
}

struct found {
	int n;
	int last_id;
	long bad;
	unsigned char seen[512]; /* by message id */
};

static void found_cb(void *ctx, void *p)
{
	struct found *f = ctx;
	const struct msg *m = p;

	f->bad += m->magic != MSG_LIVE;
	f->n++;
	f->last_id = m->id;
	if (m->id >= 0 && (size_t)m->id < sizeof(f->seen))
		f->seen[m->id]++;
}

static int count(struct retain_store *r, const char *filter)
{
	struct found f = {0};

	retain_match(r, filter, strlen(filter), found_cb, &f);
	return f.bad ? -1 : f.n;
}

TEST(retain_set_replaces_and_releases_previous_after_grace_period)
{
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);
	struct found f = {0};

	CHECK_EQ(set(r, "a/b", 1), 0);
	CHECK_EQ(set(r, "a/b", 2), 0);
	CHECK_EQ(retain_count(r), 1);
	/* This thread is online and has not been quiescent since the swap,
	 * so no grace period can have ended: message 1 is still alive. */
	CHECK_EQ(atomic_load(&released), 0);
	retain_match(r, "a/b", 3, found_cb, &f);
	CHECK(f.n == 1 && f.last_id == 2 && f.bad == 0);
	urcu_qsbr_barrier();
	CHECK_EQ(atomic_load(&released), 1);
	retain_free(r);
	CHECK_EQ(atomic_load(&released), 2);
	rcu_leave();
}

TEST(retain_set_null_clears_and_prunes)
{
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	CHECK_EQ(set(r, "a", 1), 0);
	CHECK_EQ(set(r, "a/b/c", 2), 0);
	CHECK_EQ(set(r, "a/b/d", 3), 0);
	CHECK_EQ(retain_node_count(r), 4);
	CHECK_EQ(set(r, "a/b", -1), 0); /* inner node, nothing stored */
	CHECK_EQ(set(r, "x/y", -1), 0); /* absent */
	CHECK_EQ(retain_count(r), 3);
	CHECK_EQ(retain_node_count(r), 4);
	CHECK_EQ(set(r, "a/b/c", -1), 0);
	CHECK_EQ(retain_node_count(r), 3);
	CHECK_EQ(set(r, "a", -1), 0); /* keeps a: a/b/d is below it */
	CHECK_EQ(retain_node_count(r), 3);
	CHECK_EQ(count(r, "#"), 1);
	CHECK_EQ(set(r, "a/b/d", -1), 0);
	CHECK_EQ(retain_count(r), 0);
	CHECK_EQ(retain_node_count(r), 0);
	CHECK_EQ(count(r, "#"), 0);
	urcu_qsbr_barrier();
	CHECK_EQ(atomic_load(&released), 3);
	retain_free(r);
	rcu_leave();
}

TEST(retain_count_tracks_topics_not_replacements)
{
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	for (int i = 0; i < 10; i++)
		CHECK_EQ(set(r, "same/topic", i), 0);
	CHECK_EQ(retain_count(r), 1);
	CHECK_EQ(set(r, "other", 10), 0);
	CHECK_EQ(retain_count(r), 2);
	CHECK_EQ(set(r, "other", -1), 0);
	CHECK_EQ(set(r, "other", -1), 0);
	CHECK_EQ(retain_count(r), 1);
	retain_free(r);
	urcu_qsbr_barrier();
	CHECK_EQ(atomic_load(&released), 11);
	rcu_leave();
}

/* The spec's topics (4.7.1.2, 4.7.1.3, 4.7.2, 4.7.3) stored once each. */
static const char *spec_topics[] = {
	"sport",
	"sport/",
	"sport/tennis",
	"sport/tennis/player1",
	"sport/tennis/player1/ranking",
	"sport/tennis/player1/score/wimbledon",
	"sport/tennis/player2",
	"sport/tennisplayer1",
	"/finance",
	"finance",
	"Accounts",
	"$SYS",
	"$SYS/monitor/Clients",
	"a//b",
};

TEST(retain_match_spec_examples)
{
	static const struct {
		const char *filter;
		int n;
	} c[] = {
		{"sport/tennis/player1/#", 3},
		{"sport/#", 8},
		{"sport/tennis/#", 5},
		{"sport/tennis/+", 2},
		{"sport/+", 3},	  /* "sport/", "sport/tennis", "sport/tennisplayer1" */
		{"+", 3},	  /* sport, finance, Accounts: not $SYS */
		{"+/+", 4},	  /* sport/, sport/tennis, sport/tennisplayer1, /finance */
		{"/+", 1},
		{"+/tennis/#", 5},
		{"sport/+/player1", 1},
		{"#", 12},	  /* everything but the two $SYS topics */
		{"+/monitor/Clients", 0},
		{"$SYS/#", 2},
		{"$SYS/monitor/+", 1},
		{"ACCOUNTS", 0},
		{"a/+/b", 1},
		{"a/#", 1},
	};
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);
	const int nt = (int)(sizeof(spec_topics) / sizeof(spec_topics[0]));

	for (int i = 0; i < nt; i++)
		CHECK_EQ(set(r, spec_topics[i], i), 0);
	for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
		struct found f = {0};
		const char *fl = c[k].filter;

		retain_match(r, fl, strlen(fl), found_cb, &f);
		if (f.n != c[k].n)
			fprintf(stderr, "  filter \"%s\": %d != %d\n", fl, f.n,
				c[k].n);
		CHECK_EQ(f.n, c[k].n);
		for (int i = 0; i < nt; i++)
			CHECK_EQ(f.seen[i],
				 topic_matches(fl, strlen(fl), spec_topics[i],
					       strlen(spec_topics[i])));
	}
	retain_free(r);
	rcu_leave();
}

TEST(retain_empty_levels_are_real_levels)
{
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	CHECK_EQ(set(r, "/", 1), 0);
	CHECK_EQ(set(r, "a/", 2), 0);
	CHECK_EQ(set(r, "a", 3), 0);
	CHECK_EQ(count(r, "+/+"), 2);
	CHECK_EQ(count(r, "+"), 1);
	CHECK_EQ(count(r, "/#"), 1);
	CHECK_EQ(count(r, "a/+"), 1);
	CHECK_EQ(count(r, "a/#"), 2);
	CHECK_EQ(count(r, "a//"), 0);
	retain_free(r);
	rcu_leave();
}

static void check_against_model(int *test_failed_, struct retain_store *r,
				const struct gen *gn, const bool *held)
{
	for (int i = 0; i < gn->nf; i++) {
		static struct found f;
		const char *fl = gn->filters[i];

		memset(&f, 0, sizeof(f));
		retain_match(r, fl, strlen(fl), found_cb, &f);
		CHECK_EQ(f.bad, 0);
		for (int k = 0; k < gn->nt; k++) {
			bool m = held[k] && topic_matches(fl, strlen(fl),
							  gn->topics[k],
							  strlen(gn->topics[k]));
			if (f.seen[k] != m) {
				fprintf(stderr, "  \"%s\" vs \"%s\": %d\n", fl,
					gn->topics[k], f.seen[k]);
				*test_failed_ = 1;
			}
		}
	}
}

TEST(retain_match_agrees_with_topic_matches_on_every_small_pair)
{
	static struct gen gn;
	static bool held[128];
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	gen_all(&gn);
	for (int k = 0; k < gn.nt; k++) {
		CHECK_EQ(set(r, gn.topics[k], k), 0);
		held[k] = true;
	}
	CHECK_EQ(retain_count(r), gn.nt);
	check_against_model(test_failed_, r, &gn, held);
	retain_free(r);
	rcu_leave();
}

TEST(retain_random_churn_agrees_with_model_and_prunes_to_empty)
{
	static struct gen gn;
	static bool held[128];
	uint64_t rng = 0x853c49e6748fea9bull;
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	gen_all(&gn);
	memset(held, 0, sizeof(held));
	for (int op = 0; op < 5000; op++) {
		int k = (int)(rng_next(&rng) % (uint64_t)gn.nt);
		bool put = rng_next(&rng) % 2;

		CHECK_EQ(set(r, gn.topics[k], put ? k : -1), 0);
		held[k] = put;
		if (op % 500 == 0) {
			check_against_model(test_failed_, r, &gn, held);
			urcu_qsbr_quiescent_state();
		}
	}
	for (int k = 0; k < gn.nt; k++)
		CHECK_EQ(set(r, gn.topics[k], -1), 0);
	CHECK_EQ(retain_count(r), 0);
	CHECK_EQ(retain_node_count(r), 0);
	retain_free(r);
	rcu_leave();
}

/* Filter levels are hashed while scanning for '/', a word at a time: they
 * must hash as stored topic levels do for every length and offset. */
TEST(retain_levels_of_every_length_and_alignment_match)
{
	char buf[64];
	int id = 0;
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	for (int c = 0; c < 9; c++)
		for (int a = 0; a < 18; a++)
			for (int b = 0; b < 18; b++, id++) {
				aligned_topic(buf, c, a, b);
				CHECK_EQ(set(r, buf, id), 0);
			}
	id = 0;
	for (int c = 0; c < 9; c++)
		for (int a = 0; a < 18; a++)
			for (int b = 0; b < 18; b++, id++) {
				struct found f = {0};
				aligned_topic(buf, c, a, b);
				retain_match(r, buf, strlen(buf), found_cb, &f);
				CHECK(f.n == 1 && f.last_id == id);
			}
	retain_free(r);
	rcu_leave();
}

TEST(retain_wide_level_with_5000_topics_finds_each)
{
	enum { N = 5000 };
	char t[64];
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	for (int i = 0; i < N; i++) {
		snprintf(t, sizeof(t), "devices/%d/state", i);
		CHECK_EQ(set(r, t, i), 0);
	}
	CHECK_EQ(count(r, "devices/+/state"), N);
	CHECK_EQ(count(r, "devices/#"), N);
	CHECK_EQ(count(r, "devices/1234/#"), 1);
	for (int i = 1; i < N; i += 2) {
		snprintf(t, sizeof(t), "devices/%d/state", i);
		CHECK_EQ(set(r, t, -1), 0);
	}
	CHECK_EQ(count(r, "devices/+/state"), N / 2);
	CHECK_EQ(count(r, "devices/1234/state"), 1);
	CHECK_EQ(count(r, "devices/1235/state"), 0);
	for (int i = 0; i < N; i += 2) {
		snprintf(t, sizeof(t), "devices/%d/state", i);
		CHECK_EQ(set(r, t, -1), 0);
	}
	CHECK_EQ(retain_node_count(r), 0);
	retain_free(r);
	rcu_leave();
}

static char *deep_topic(size_t n)
{
	char *s = malloc(2 * n + 2);

	for (size_t i = 0; i < n; i++) {
		s[2 * i] = 'l';
		s[2 * i + 1] = '/';
	}
	s[2 * n - 1] = 0;
	return s;
}

TEST(retain_topic_deeper_than_levels_max_is_refused)
{
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);
	char *ok = deep_topic(TRIE_LEVELS_MAX);
	char *deep = deep_topic(TRIE_LEVELS_MAX + 1);

	CHECK_EQ(set(r, ok, 1), 0);
	CHECK_EQ(set(r, deep, 2), -1);
	CHECK_EQ(retain_count(r), 1);
	CHECK_EQ(retain_node_count(r), TRIE_LEVELS_MAX);
	CHECK_EQ(count(r, "#"), 1);
	CHECK_EQ(count(r, "l/#"), 1);
	CHECK_EQ(count(r, ok), 1);
	CHECK_EQ(count(r, deep), 0);
	CHECK_EQ(set(r, ok, -1), 0);
	CHECK_EQ(retain_node_count(r), 0);
	free(ok);
	free(deep);
	retain_free(r);
	rcu_leave();
}

TEST(retain_free_releases_every_message)
{
	char t[64];
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);

	for (int i = 0; i < 300; i++) {
		snprintf(t, sizeof(t), "x/%d/y/%d", i % 13, i);
		CHECK_EQ(set(r, t, i), 0);
	}
	for (int i = 0; i < 300; i += 3) { /* 100 replaced: releases queued */
		snprintf(t, sizeof(t), "x/%d/y/%d", i % 13, i);
		CHECK_EQ(set(r, t, i), 0);
	}
	retain_free(r);
	urcu_qsbr_barrier();
	CHECK_EQ(atomic_load(&released), 400);
	retain_free(NULL);
	rcu_leave();
}

/* ---- readers racing a writer ---- */

enum { READERS = 3, STABLE = 10, CHURN = 1000 };

struct race {
	struct retain_store *r;
	atomic_bool stop;
	atomic_long errors;
	atomic_long matches;
};

struct tally {
	int stable, total;
	long bad;
};

static void tally_cb(void *ctx, void *p)
{
	struct tally *t = ctx;
	const struct msg *m = p;

	/* Inside the read-side section a handed-out message is alive. */
	t->bad += m->magic != MSG_LIVE;
	t->stable += m->stable;
	t->total++;
}

static long reader_check(struct retain_store *r)
{
	struct tally t = {0};
	long bad = 0;

	retain_match(r, "t/+", 3, tally_cb, &t);
	bad += t.bad + (t.stable != STABLE);
	t = (struct tally){0};
	retain_match(r, "t/s3", 4, tally_cb, &t);
	bad += t.bad + (t.stable != 1 || t.total != 1);
	t = (struct tally){0};
	retain_match(r, "#", 1, tally_cb, &t);
	bad += t.bad + (t.stable != STABLE);
	t = (struct tally){0};
	retain_match(r, "$SYS/#", 6, tally_cb, &t);
	bad += t.bad + (t.total != 0); /* never written */
	return bad;
}

static void *reader_main(void *arg)
{
	struct race *rc = arg;
	long n = 0, bad = 0;

	urcu_qsbr_register_thread();
	while (!atomic_load(&rc->stop)) {
		for (int k = 0; k < 8; k++, n++)
			bad += reader_check(rc->r);
		urcu_qsbr_quiescent_state();
	}
	urcu_qsbr_unregister_thread();
	atomic_fetch_add(&rc->errors, bad);
	atomic_fetch_add(&rc->matches, n);
	return NULL;
}

/* Sets, replaces and clears churn topics beside and below the stable ones,
 * so the shared tables grow, shrink and are rebuilt under the readers. */
static void churn_round(struct retain_store *r, int round)
{
	char t[64];

	for (int pass = 0; pass < 3; pass++) {
		for (int j = 0; j < CHURN; j++) {
			int id = (j * 7 + round + pass) % CHURN;
			if (id % 2)
				snprintf(t, sizeof(t), "t/c%d", id);
			else
				snprintf(t, sizeof(t), "t/s%d/c/%d", id % STABLE, id);
			(void)set(r, t, pass == 2 ? -1 : 1000 + id);
			if (j % 64 == 0)
				urcu_qsbr_quiescent_state();
		}
	}
}

TEST(retain_concurrent_readers_always_see_stable_topics)
{
	static struct race rc;
	pthread_t th[READERS];
	char t[32];
	rcu_enter();

	rc.r = retain_new(msg_release);
	atomic_store(&rc.stop, false);
	atomic_store(&rc.errors, 0);
	atomic_store(&rc.matches, 0);
	for (int i = 0; i < STABLE; i++) {
		struct msg *m = msg_new(i);
		m->stable = true;
		snprintf(t, sizeof(t), "t/s%d", i);
		CHECK_EQ(retain_set(rc.r, t, strlen(t), m), 0);
	}
	size_t stable_nodes = retain_node_count(rc.r);
	CHECK_EQ(reader_check(rc.r), 0);
	for (int i = 0; i < READERS; i++)
		CHECK_EQ(pthread_create(&th[i], NULL, reader_main, &rc), 0);
	struct timespec t0;
	int rounds = 0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (; rounds < 2 || elapsed_ms(&t0) < 300; rounds++)
		churn_round(rc.r, rounds);
	atomic_store(&rc.stop, true);
	urcu_qsbr_thread_offline(); /* never block while online */
	for (int i = 0; i < READERS; i++)
		pthread_join(th[i], NULL);
	urcu_qsbr_thread_online();
	CHECK_EQ(atomic_load(&rc.errors), 0);
	CHECK(atomic_load(&rc.matches) > 0);
	CHECK_EQ(retain_count(rc.r), STABLE);
	CHECK_EQ(retain_node_count(rc.r), stable_nodes);
	retain_free(rc.r);
	urcu_qsbr_barrier();
	/* every message ever stored, churn and stable, came back */
	CHECK_EQ(atomic_load(&released), STABLE + rounds * 2 * CHURN);
	rcu_leave();
}

/* Writers on several threads replacing (lock-free) and clearing (locked)
 * the same few topics: every message stored is released exactly once,
 * the count matches what is left, and cleared topics leave no nodes. */
#define WRITERS 3
#define WTOPICS 4
#define WROUNDS 20000

struct wrace {
	struct retain_store *r;
	int idx;
};

static void *writer_main(void *arg)
{
	struct wrace *w = arg;
	char t[16];

	urcu_qsbr_register_thread();
	for (int i = 0; i < WROUNDS; i++) {
		snprintf(t, sizeof(t), "w/%d", (i + w->idx) % WTOPICS);
		/* Mostly replacements; every seventh a clear. */
		if (i % 7 == 3 && w->idx == 0) {
			retain_set(w->r, t, strlen(t), NULL);
		} else {
			struct msg *m = msg_new(i);
			if (retain_set(w->r, t, strlen(t), m) != 0)
				free(m);
		}
		if (i % 32 == 0)
			urcu_qsbr_quiescent_state();
	}
	urcu_qsbr_unregister_thread();
	return NULL;
}

TEST(retain_concurrent_writers_release_each_message_once)
{
	static struct wrace w[WRITERS];
	pthread_t th[WRITERS];
	rcu_enter();
	struct retain_store *r = retain_new(msg_release);
	urcu_qsbr_thread_offline();
	for (int i = 0; i < WRITERS; i++) {
		w[i] = (struct wrace){.r = r, .idx = i};
		CHECK_EQ(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
	}
	for (int i = 0; i < WRITERS; i++)
		pthread_join(th[i], NULL);
	urcu_qsbr_thread_online();
	urcu_qsbr_barrier();
	long stored = (long)WRITERS * WROUNDS;
	for (int i = 0; i < WROUNDS; i++)
		stored -= i % 7 == 3; /* writer 0's clears */
	size_t left = retain_count(r);
	CHECK(left <= WTOPICS);
	CHECK_EQ(atomic_load(&released) + (long)left, stored);
	for (int i = 0; i < WTOPICS; i++) {
		char t[16];
		snprintf(t, sizeof(t), "w/%d", i);
		retain_set(r, t, strlen(t), NULL);
	}
	CHECK_EQ(retain_count(r), 0);
	CHECK_EQ(retain_node_count(r), 0);
	retain_free(r);
	urcu_qsbr_barrier();
	CHECK_EQ(atomic_load(&released), stored);
	rcu_leave();
}
