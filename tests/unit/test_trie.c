/* Per-shard trie: the spec's matching examples, result codes, limits, and
 * pruning back to an empty trie. */
#include "core/topic.h"
#include "core/trie.h"
#include "runner.h"
#include "topic_model.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

struct match_case {
	const char *filter, *topic;
	bool match;
};

struct hits {
	int n;
	uint32_t last_id, last_options;
	unsigned char seen[512]; /* indexed by sub_id */
};

static void hits_cb(void *ctx, const struct trie_sub *s)
{
	struct hits *h = ctx;

	h->n++;
	h->last_id = s->sub_id;
	h->last_options = s->options;
	if (s->sub_id < sizeof(h->seen))
		h->seen[s->sub_id]++;
}

static int owner_tag[1024]; /* distinct addresses to stand for sessions */

static enum trie_result sub(struct trie *t, const char *f, int owner,
			    uint32_t id)
{
	struct trie_sub s = {&owner_tag[owner], 0, id};

	return trie_subscribe(t, f, strlen(f), &s);
}

static enum trie_result unsub(struct trie *t, const char *f, int owner)
{
	return trie_unsubscribe(t, f, strlen(f), &owner_tag[owner]);
}

static int match_count(const struct trie *t, const char *topic)
{
	struct hits h = {0};

	trie_match(t, topic, strlen(topic), hits_cb, &h);
	return h.n;
}

/* Each row three ways: the expectation, topic_matches, and trie_match on a
 * trie holding only that filter. Prints the row that disagrees. */
static void check_cases(int *test_failed_, const struct match_case *c,
			size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct trie *t = trie_new();
		bool tm = topic_matches(c[i].filter, strlen(c[i].filter),
					c[i].topic, strlen(c[i].topic));

		CHECK(t != NULL);
		CHECK_EQ(sub(t, c[i].filter, 0, 1), TRIE_ADDED_FIRST);
		int got = match_count(t, c[i].topic);
		if (tm != c[i].match || got != (int)c[i].match) {
			fprintf(stderr,
				"  filter \"%s\" topic \"%s\": want %d, "
				"topic_matches %d, trie_match %d\n",
				c[i].filter, c[i].topic, c[i].match, tm, got);
			*test_failed_ = 1;
		}
		trie_free(t);
	}
}

#define CHECK_CASES(tbl) check_cases(test_failed_, tbl, sizeof(tbl) / sizeof(tbl[0]))

/* MQTT 5.0 4.7.1.2 (3.1.1 4.7.1.2): the multi-level wildcard. */
TEST(trie_spec_multi_level_wildcard_examples)
{
	static const struct match_case c[] = {
		{"sport/tennis/player1/#", "sport/tennis/player1", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
		{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
		{"sport/tennis/player1/#", "sport/tennis/player2", false},
		{"sport/tennis/player1/#", "sport/tennis", false},
		{"sport/#", "sport", true},
		{"sport/#", "sports", false},
		{"#", "sport", true},
		{"#", "sport/tennis/player1", true},
		{"#", "/finance", true},
		{"sport/tennis/#", "sport/tennis", true},
		{"sport/tennis/#", "sport/tennis/player1/ranking", true},
		{"sport/tennis/#", "sport/tennisplayer1", false},
	};
	CHECK_CASES(c);
}

/* 4.7.1.3: the single-level wildcard. */
TEST(trie_spec_single_level_wildcard_examples)
{
	static const struct match_case c[] = {
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/tennis/+", "sport/tennis/player2", true},
		{"sport/tennis/+", "sport/tennis/player1/ranking", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
		{"+", "sport", true},
		{"+", "sport/tennis", false},
		{"+/tennis/#", "sport/tennis", true},
		{"+/tennis/#", "sport/tennis/player1", true},
		{"+/tennis/#", "sport/golf/player1", false},
		{"sport/+/player1", "sport/tennis/player1", true},
		{"sport/+/player1", "sport/tennis/player2", false},
		{"+/+", "/finance", true},
		{"/+", "/finance", true},
		{"+", "/finance", false},
	};
	CHECK_CASES(c);
}

/* 4.7.2: topics beginning with '$'. */
TEST(trie_spec_dollar_topics_examples)
{
	static const struct match_case c[] = {
		{"#", "$SYS/monitor/Clients", false},
		{"#", "$SYS", false},
		{"+/monitor/Clients", "$SYS/monitor/Clients", false},
		{"+", "$SYS", false},
		{"+/#", "$SYS/x", false},
		{"$SYS/#", "$SYS/monitor/Clients", true},
		{"$SYS/#", "$SYS/x", true},
		{"$SYS/#", "$SYS", true},
		{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
		/* only the first level is special */
		{"a/+", "a/$x", true},
		{"a/#", "a/$x", true},
		{"+", "x$", true},
	};
	CHECK_CASES(c);
}

/* 4.7.2: "#" and "$SYS/#" together receive both kinds of topic. */
TEST(trie_spec_hash_plus_sys_hash_receive_everything)
{
	struct trie *t = trie_new();

	CHECK_EQ(sub(t, "#", 0, 1), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "$SYS/#", 0, 2), TRIE_ADDED_FIRST);
	struct hits h = {0};
	trie_match(t, "$SYS/broker/load", 16, hits_cb, &h);
	CHECK_EQ(h.n, 1);
	CHECK_EQ(h.last_id, 2);
	h = (struct hits){0};
	trie_match(t, "sport/tennis", 12, hits_cb, &h);
	CHECK_EQ(h.n, 1);
	CHECK_EQ(h.last_id, 1);
	trie_free(t);
}

/* 4.7.3: levels compare byte for byte; a leading '/' makes a level. */
TEST(trie_spec_topic_semantics_examples)
{
	static const struct match_case c[] = {
		{"ACCOUNTS", "Accounts", false},
		{"Accounts", "Accounts", true},
		{"Accounts payable", "Accounts payable", true},
		{"/finance", "finance", false},
		{"finance", "/finance", false},
		{"/finance", "/finance", true},
	};
	CHECK_CASES(c);
}

TEST(trie_empty_levels_are_real_levels)
{
	static const struct match_case c[] = {
		{"/a", "/a", true},	     {"+/a", "/a", true},
		{"a/", "a/", true},	     {"a/+", "a/", true},
		{"a/#", "a/", true},	     {"a//b", "a//b", true},
		{"a/+/b", "a//b", true},     {"a/b", "a//b", false},
		{"/", "/", true},	     {"+/+", "/", true},
		{"+", "/", false},	     {"#", "/", true},
		{"/#", "/", true},	     {"/#", "//", true},
		{"//", "/", false},	     {"a//", "a/", false},
		{"+/+/+", "//", true},	     {"a/+", "a", false},
		{"a", "a/", false},	     {"+/#", "/", true},
	};
	CHECK_CASES(c);
}

TEST(trie_hash_matches_parent_and_every_child_level)
{
	struct trie *t = trie_new();

	CHECK_EQ(sub(t, "a/#", 0, 1), TRIE_ADDED_FIRST);
	CHECK_EQ(match_count(t, "a"), 1);
	CHECK_EQ(match_count(t, "a/b"), 1);
	CHECK_EQ(match_count(t, "a/b/c/d/e"), 1);
	CHECK_EQ(match_count(t, "b"), 0);
	CHECK_EQ(match_count(t, "ab"), 0);
	trie_free(t);
}

TEST(trie_match_reports_once_per_matching_filter)
{
	struct trie *t = trie_new();
	struct hits h = {0};

	CHECK_EQ(sub(t, "a/b", 0, 1), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "a/+", 0, 2), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "a/#", 0, 3), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "+/b", 0, 4), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "#", 0, 5), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "+/+/+", 0, 6), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "a/b", 1, 7), TRIE_ADDED);
	trie_match(t, "a/b", 3, hits_cb, &h);
	CHECK_EQ(h.n, 6);
	for (uint32_t id = 1; id <= 7; id++)
		CHECK_EQ(h.seen[id], id == 6 ? 0 : 1);
	CHECK_EQ(trie_filter_count(t), 6);
	trie_free(t);
}

TEST(trie_subscribe_results_track_first_and_last_subscriber)
{
	struct trie *t = trie_new();

	CHECK_EQ(sub(t, "x/+/y", 0, 1), TRIE_ADDED_FIRST);
	CHECK_EQ(sub(t, "x/+/y", 1, 2), TRIE_ADDED);
	CHECK_EQ(trie_filter_count(t), 1);
	CHECK_EQ(unsub(t, "x/+/y", 0), TRIE_REMOVED);
	CHECK_EQ(unsub(t, "x/+/y", 0), TRIE_NOT_FOUND);
	CHECK_EQ(trie_filter_count(t), 1);
	CHECK_EQ(unsub(t, "x/+/y", 1), TRIE_REMOVED_LAST);
	CHECK_EQ(trie_filter_count(t), 0);
	CHECK_EQ(trie_node_count(t), 0);
	CHECK_EQ(sub(t, "x/+/y", 1, 3), TRIE_ADDED_FIRST);
	trie_free(t);
}

/* A cluster node's interest in a filter follows its ordinary subscribers:
 * a shared group on the same filter, whichever came first, neither makes
 * nor keeps it (the lost route of test_shared_subscription_...). */
TEST(trie_plain_count_leaves_out_group_subscriptions)
{
	struct trie *t = trie_new();
	struct trie_sub g = {&owner_tag[9], TRIE_SUB_GROUP, 0};

	CHECK_EQ(trie_plain_count(t, "s/+", 3), 0);
	CHECK_EQ(trie_subscribe(t, "s/+", 3, &g), TRIE_ADDED_FIRST);
	CHECK_EQ(trie_plain_count(t, "s/+", 3), 0);
	CHECK_EQ(sub(t, "s/+", 0, 1), TRIE_ADDED);
	CHECK_EQ(trie_plain_count(t, "s/+", 3), 1);
	CHECK_EQ(sub(t, "s/+", 1, 2), TRIE_ADDED);
	CHECK_EQ(trie_plain_count(t, "s/+", 3), 2);
	CHECK_EQ(trie_plain_count(t, "s/#", 3), 0);
	CHECK_EQ(unsub(t, "s/+", 0), TRIE_REMOVED);
	CHECK_EQ(unsub(t, "s/+", 1), TRIE_REMOVED);
	CHECK_EQ(trie_plain_count(t, "s/+", 3), 0);
	CHECK_EQ(sub(t, "s/+", 1, 2), TRIE_ADDED);
	CHECK_EQ(trie_unsubscribe(t, "s/+", 3, g.owner), TRIE_REMOVED);
	CHECK_EQ(trie_plain_count(t, "s/+", 3), 1);
	g.options = 0; /* an owner changing kind is counted again */
	CHECK_EQ(trie_subscribe(t, "s/+", 3, &g), TRIE_ADDED);
	g.options = TRIE_SUB_GROUP;
	CHECK_EQ(trie_subscribe(t, "s/+", 3, &g), TRIE_REPLACED);
	CHECK_EQ(trie_plain_count(t, "s/+", 3), 1);
	trie_free(t);
}

TEST(trie_subscribe_existing_owner_replaces_options)
{
	struct trie *t = trie_new();
	struct trie_sub s = {&owner_tag[0], 1, 10};
	struct hits h = {0};

	CHECK_EQ(trie_subscribe(t, "a/b", 3, &s), TRIE_ADDED_FIRST);
	s.options = 2;
	s.sub_id = 20;
	CHECK_EQ(trie_subscribe(t, "a/b", 3, &s), TRIE_REPLACED);
	trie_match(t, "a/b", 3, hits_cb, &h);
	CHECK_EQ(h.n, 1);
	CHECK_EQ(h.last_options, 2);
	CHECK_EQ(h.last_id, 20);
	CHECK_EQ(trie_filter_count(t), 1);
	trie_free(t);
}

TEST(trie_unsubscribe_unknown_filter_or_owner_is_not_found)
{
	struct trie *t = trie_new();

	CHECK_EQ(unsub(t, "a/b", 0), TRIE_NOT_FOUND);
	CHECK_EQ(sub(t, "a/b/c", 0, 1), TRIE_ADDED_FIRST);
	size_t nodes = trie_node_count(t);
	CHECK_EQ(unsub(t, "a/b", 0), TRIE_NOT_FOUND); /* inner node, no subs */
	CHECK_EQ(unsub(t, "a/b/c", 1), TRIE_NOT_FOUND);
	CHECK_EQ(unsub(t, "a/+/c", 0), TRIE_NOT_FOUND);
	CHECK_EQ(unsub(t, "a/b/c/#", 0), TRIE_NOT_FOUND);
	CHECK_EQ(trie_node_count(t), nodes);
	CHECK_EQ(match_count(t, "a/b/c"), 1);
	trie_free(t);
}

TEST(trie_filter_deeper_than_levels_max_is_refused)
{
	struct trie *t = trie_new();
	char *ok = deep_filter(TRIE_LEVELS_MAX, NULL);
	char *deep = deep_filter(TRIE_LEVELS_MAX + 1, NULL);
	char *deep_hash = deep_filter(TRIE_LEVELS_MAX + 1, "#");

	CHECK_EQ(sub(t, ok, 0, 1), TRIE_ADDED_FIRST);
	CHECK_EQ(trie_node_count(t), TRIE_LEVELS_MAX);
	CHECK_EQ(sub(t, deep, 0, 2), TRIE_TOO_DEEP);
	CHECK_EQ(sub(t, deep_hash, 0, 3), TRIE_TOO_DEEP);
	CHECK_EQ(unsub(t, deep, 0), TRIE_NOT_FOUND);
	CHECK_EQ(trie_node_count(t), TRIE_LEVELS_MAX);
	CHECK_EQ(trie_filter_count(t), 1);
	CHECK_EQ(match_count(t, ok), 1);
	CHECK_EQ(unsub(t, ok, 0), TRIE_REMOVED_LAST);
	CHECK_EQ(trie_node_count(t), 0);
	free(ok);
	free(deep);
	free(deep_hash);
	trie_free(t);
}

TEST(trie_topic_deeper_than_levels_max_matches_only_what_fits)
{
	struct trie *t = trie_new();
	char *exact = deep_filter(TRIE_LEVELS_MAX, NULL);
	char *plus = deep_filter(TRIE_LEVELS_MAX, "+");
	char *hash = deep_filter(TRIE_LEVELS_MAX, "#");
	char *topic_max = deep_filter(TRIE_LEVELS_MAX, NULL);
	char *topic_deep = deep_filter(TRIE_LEVELS_MAX + 1, NULL);
	char *topic_deeper = deep_filter(3 * TRIE_LEVELS_MAX, NULL);
	const char *filters[] = {"l/#", "+/#", "#", exact, plus, hash};
	const char *topics[] = {topic_max, topic_deep, topic_deeper};
	const int want[] = {6, 4, 4};

	for (int i = 0; i < 6; i++)
		CHECK_EQ(sub(t, filters[i], 0, (uint32_t)i), TRIE_ADDED_FIRST);
	for (int k = 0; k < 3; k++) {
		struct hits h = {0};
		trie_match(t, topics[k], strlen(topics[k]), hits_cb, &h);
		CHECK_EQ(h.n, want[k]);
		for (int i = 0; i < 6; i++)
			CHECK_EQ(h.seen[i],
				 topic_matches(filters[i], strlen(filters[i]),
					       topics[k], strlen(topics[k])));
	}
	free(exact);
	free(plus);
	free(hash);
	free(topic_max);
	free(topic_deep);
	free(topic_deeper);
	trie_free(t);
}

/* Levels are hashed a word at a time while scanning for '/': the topic
 * side must agree with the filter side for every length and offset. */
TEST(trie_levels_of_every_length_and_alignment_match)
{
	struct trie *t = trie_new();
	char buf[64];
	uint32_t id = 0;

	for (int c = 0; c < 9; c++)
		for (int a = 0; a < 18; a++)
			for (int b = 0; b < 18; b++, id++) {
				aligned_topic(buf, c, a, b);
				CHECK_EQ(sub(t, buf, 0, id), TRIE_ADDED_FIRST);
			}
	id = 0;
	for (int c = 0; c < 9; c++)
		for (int a = 0; a < 18; a++)
			for (int b = 0; b < 18; b++, id++) {
				struct hits h = {0};
				aligned_topic(buf, c, a, b);
				trie_match(t, buf, strlen(buf), hits_cb, &h);
				CHECK(h.n == 1 && h.last_id == id);
			}
	trie_free(t);
}

/* Fan-in telemetry: one level with thousands of siblings. */
TEST(trie_wide_level_with_5000_children_finds_each_child)
{
	enum { N = 5000 };
	struct trie *t = trie_new();
	char f[64];

	for (int i = 0; i < N; i++) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(sub(t, f, i % 1024, (uint32_t)i), TRIE_ADDED_FIRST);
	}
	CHECK_EQ(trie_filter_count(t), N);
	CHECK_EQ(trie_node_count(t), 1 + 2 * N);
	for (int i = 0; i < N; i++) {
		struct hits h = {0};
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		trie_match(t, f, strlen(f), hits_cb, &h);
		CHECK(h.n == 1 && h.last_id == (uint32_t)i);
	}
	for (int i = 1; i < N; i += 2) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(unsub(t, f, i % 1024), TRIE_REMOVED_LAST);
	}
	for (int i = 0; i < N; i++) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(match_count(t, f), i % 2 == 0);
	}
	for (int i = 0; i < N; i += 2) {
		snprintf(f, sizeof(f), "devices/%d/telemetry", i);
		CHECK_EQ(unsub(t, f, i % 1024), TRIE_REMOVED_LAST);
	}
	CHECK_EQ(trie_filter_count(t), 0);
	CHECK_EQ(trie_node_count(t), 0);
	trie_free(t);
}

TEST(trie_many_owners_on_one_filter_grow_and_shrink)
{
	struct trie *t = trie_new();

	for (int i = 0; i < 1000; i++)
		CHECK_EQ(sub(t, "news/+", i, (uint32_t)i),
			 i ? TRIE_ADDED : TRIE_ADDED_FIRST);
	CHECK_EQ(match_count(t, "news/today"), 1000);
	for (int i = 0; i < 990; i++)
		CHECK_EQ(unsub(t, "news/+", i), TRIE_REMOVED);
	struct hits h = {0};
	trie_match(t, "news/today", 10, hits_cb, &h);
	CHECK_EQ(h.n, 10);
	for (int i = 990; i < 1000; i++)
		CHECK_EQ(unsub(t, "news/+", i), i < 999 ? TRIE_REMOVED
							: TRIE_REMOVED_LAST);
	CHECK_EQ(trie_node_count(t), 0);
	trie_free(t);
}

TEST(trie_match_agrees_with_topic_matches_on_every_small_pair)
{
	static struct gen g;
	struct trie *t = trie_new();

	gen_all(&g);
	CHECK(g.nf > 150 && g.nf <= 256 && g.nt > 60);
	for (int i = 0; i < g.nf; i++)
		CHECK_EQ(sub(t, g.filters[i], 0, (uint32_t)i), TRIE_ADDED_FIRST);
	for (int k = 0; k < g.nt; k++) {
		static struct hits h;
		const char *tp = g.topics[k];
		int want = 0;

		memset(&h, 0, sizeof(h));
		trie_match(t, tp, strlen(tp), hits_cb, &h);
		for (int i = 0; i < g.nf; i++) {
			bool m = topic_matches(g.filters[i],
					       strlen(g.filters[i]), tp,
					       strlen(tp));
			want += m;
			if (h.seen[i] != m) {
				fprintf(stderr, "  \"%s\" vs \"%s\": trie %d\n",
					g.filters[i], tp, h.seen[i]);
				*test_failed_ = 1;
			}
		}
		CHECK_EQ(h.n, want);
	}
	for (int i = 0; i < g.nf; i++)
		CHECK_EQ(unsub(t, g.filters[i], 0), TRIE_REMOVED_LAST);
	CHECK_EQ(trie_node_count(t), 0);
	trie_free(t);
}

/* Random subscribe/unsubscribe against a table of who holds what; after
 * unsubscribing everything no node is left. */
TEST(trie_random_churn_agrees_with_model_and_prunes_to_empty)
{
	enum { OWNERS = 4 };
	static struct gen g;
	static bool held[256][OWNERS];
	struct trie *t = trie_new();
	uint64_t rng = 0x9e3779b97f4a7c15ull;

	gen_all(&g);
	memset(held, 0, sizeof(held));
	for (int op = 0; op < 20000; op++) {
		int f = (int)(rng_next(&rng) % (uint64_t)g.nf);
		int o = (int)(rng_next(&rng) % OWNERS);
		const char *fs = g.filters[f];
		if (rng_next(&rng) % 3) {
			enum trie_result r = sub(t, fs, o, (uint32_t)f);
			CHECK(held[f][o] ? r == TRIE_REPLACED
					 : (r == TRIE_ADDED || r == TRIE_ADDED_FIRST));
			held[f][o] = true;
		} else {
			enum trie_result r = unsub(t, fs, o);
			CHECK(held[f][o] ? (r == TRIE_REMOVED || r == TRIE_REMOVED_LAST)
					 : r == TRIE_NOT_FOUND);
			held[f][o] = false;
		}
		if (op % 97 == 0) {
			const char *tp = g.topics[rng_next(&rng) % (uint64_t)g.nt];
			int want = 0;
			for (int i = 0; i < g.nf; i++)
				for (int k = 0; k < OWNERS; k++)
					want += held[i][k] &&
						topic_matches(g.filters[i],
							      strlen(g.filters[i]),
							      tp, strlen(tp));
			CHECK_EQ(match_count(t, tp), want);
		}
	}
	for (int f = 0; f < g.nf; f++)
		for (int o = 0; o < OWNERS; o++)
			if (held[f][o])
				CHECK(unsub(t, g.filters[f], o) != TRIE_NOT_FOUND);
	CHECK_EQ(trie_filter_count(t), 0);
	CHECK_EQ(trie_node_count(t), 0);
	trie_free(t);
}

TEST(trie_free_releases_a_populated_trie)
{
	struct trie *t = trie_new();
	char f[64];

	/* Left populated on purpose: ASan reports anything trie_free misses. */
	for (int i = 0; i < 300; i++) {
		snprintf(f, sizeof(f), "x/%d/+/y/%d/#", i % 17, i);
		CHECK_EQ(sub(t, f, i % 5, (uint32_t)i), TRIE_ADDED_FIRST);
	}
	CHECK(trie_node_count(t) > 300);
	trie_free(t);
	trie_free(NULL);
}
