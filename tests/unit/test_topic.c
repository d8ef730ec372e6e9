/* The one topic matcher (core/topic.h): edge cases checked against
 * Mosquitto 2.0.11 (a subscriber per filter, a publish per topic), the
 * relations between filters (intersect, covers) held to topic_matches on
 * every small pair, and the ACL agreeing with it rule by rule. */
#include "acl/acl.h"
#include "core/topic.h"
#include "runner.h"
#include "topic_model.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct pair_case {
	const char *a, *b;
	bool want;
};

static bool matches(const char *f, const char *t)
{
	return topic_matches(f, strlen(f), t, strlen(t));
}

static bool intersect(const char *a, const char *b)
{
	return topic_filters_intersect(a, strlen(a), b, strlen(b));
}

static bool covers(const char *o, const char *i)
{
	return topic_filter_covers(o, strlen(o), i, strlen(i));
}

static void check_pairs(int *test_failed_, const char *what,
			bool (*fn)(const char *, const char *),
			const struct pair_case *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		bool got = fn(c[i].a, c[i].b);
		if (got != c[i].want) {
			fprintf(stderr, "  %s(\"%s\", \"%s\"): got %d\n", what,
				c[i].a, c[i].b, got);
			*test_failed_ |= TEST_FAILED;
		}
	}
}

#define CHECK_PAIRS(what, fn, tbl)                                           \
	check_pairs(test_failed_, what, fn, tbl, sizeof(tbl) / sizeof(tbl[0]))

TEST(topic_matches_edge_cases_like_mosquitto)
{
	/* Rows marked M were published to /usr/sbin/mosquitto 2.0.11 with a
	 * subscriber on the filter; the others follow from the spec (4.7). */
	static const struct pair_case c[] = {
		{"a/+/#", "a/b", true},	 /* M: '#' matches the parent */
		{"a/#", "a", true},	 /* M */
		{"a/+/#", "a", false},	 /* M: '+' needs a level */
		{"+/#", "a", true},	 /* M */
		{"+/+", "/", true},	 /* M: two empty levels */
		{"#", "/", true},	 /* M */
		{"/#", "/", true},	 /* M */
		{"/+", "/", true},	 /* M */
		{"+", "/", false},	 /* M */
		{"a/+", "a/", true},	 /* M: '+' matches an empty level */
		{"a/+/+", "a//", true},	 /* M */
		{"a//#", "a/", true},	 /* M */
		{"a/", "a", false},	 /* M: trailing '/' is a level */
		{"+/", "a/", true},	 /* M */
		{"a", "a/", false},
		{"a//b", "a/b", false},
		{"a//b", "a//b", true},
		{"+/#", "$x/a", false},	 /* M: no wildcard first level for '$' */
		{"#", "$x", false},	 /* M */
		{"+", "$x", false},	 /* M */
		{"$x", "$x", true},	 /* M */
		{"$x/#", "$x", true},	 /* M */
		{"$x/+", "$x/", true},	 /* M */
		{"$SYS/#", "$SYS/a", true},
		{"a/$x", "a/$x", true},	 /* '$' only matters first */
		{"a/+", "a/$x", true},
		{"+/$x", "a/$x", true},
		{"#", "a$", true},
		{"", "a", false},	 /* an ACL %u expanded to nothing */
		{"a", "", false},	 /* no topic is empty */
		{"#", "", false},
		{"ab", "a", false},
		{"a", "ab", false},
		{"a/b", "a/bc", false},
	};
	CHECK_PAIRS("topic_matches", matches, c);
}

TEST(topic_filters_intersect_edge_cases)
{
	static const struct pair_case c[] = {
		{"a/+", "+/b", true},	  {"a/+", "b/+", false},
		{"a/#", "a", true},	  {"a", "a/#", true},
		{"a/+/#", "a", false},	  {"#", "$x/a", false},
		{"+/a", "$x/a", false},	  {"$x/#", "$x/+", true},
		{"a/", "a/+", true},	  {"a/", "a", false},
		{"+/+", "+", false},	  {"", "#", false},
		{"#", "#", true},	  {"a//b", "a/+/b", true},
		{"+", "/#", false},	  /* only the empty topic */
		{"+/+", "/#", true},
	};
	CHECK_PAIRS("topic_filters_intersect", intersect, c);
}

TEST(topic_filter_covers_edge_cases)
{
	static const struct pair_case c[] = {
		{"#", "a/b", true},	   {"#", "$x/a", false},
		{"$x/#", "$x/a", true},	   {"a/#", "a", true},
		{"a/#", "a/+/#", true},	   {"a/+", "a/#", false},
		{"a/+", "a/", true},	   {"a/+", "a/+", true},
		{"a/b", "a/+", false},	   {"+/+", "a/b", true},
		{"+/+", "a", false},	   {"a/+/#", "a", false},
		{"", "a", false},	   {"a", "", false},
		{"+", "$x", false},	   {"a", "a/#", false},
		{"+/#", "#", true},	   /* "#" alone matches no topic */
		{"/+/#", "/#", true},	   /* the parent "" is no topic */
		{"+/+/#", "#", false},
	};
	CHECK_PAIRS("topic_filter_covers", covers, c);
}

/* intersect(a, b) exactly when some small topic matches both, and covers(o,
 * i) exactly when every small topic i matches, o matches too: the model's
 * alphabet holds a witness for every pair of its filters. */
TEST(topic_relations_agree_with_topic_matches_on_every_small_pair)
{
	static struct gen g;
	static bool m[256][128];

	gen_all(&g);
	for (int i = 0; i < g.nf; i++)
		for (int k = 0; k < g.nt; k++)
			m[i][k] = matches(g.filters[i], g.topics[k]);
	for (int a = 0; a < g.nf; a++) {
		for (int b = 0; b < g.nf; b++) {
			bool both = false, inner_only = false;
			for (int k = 0; k < g.nt; k++) {
				both |= m[a][k] && m[b][k];
				inner_only |= m[b][k] && !m[a][k];
			}
			const char *fa = g.filters[a], *fb = g.filters[b];
			if (intersect(fa, fb) != both ||
			    covers(fa, fb) == inner_only) {
				fprintf(stderr,
					"  \"%s\" \"%s\": intersect %d (want "
					"%d), covers %d (want %d)\n",
					fa, fb, intersect(fa, fb), both,
					covers(fa, fb), !inner_only);
				*test_failed_ |= TEST_FAILED;
			}
		}
	}
}

/* The ACL's grant of one rule is topic_matches of that rule: its fast paths
 * (literal prefix, "prefix/#") change nothing. */
TEST(topic_acl_rule_grants_exactly_what_topic_matches_matches)
{
	static struct gen g;
	char err[256], text[64];

	gen_all(&g);
	for (int i = 0; i < g.nf; i++) {
		snprintf(text, sizeof(text), "topic read %s\n", g.filters[i]);
		struct acl_rules *a =
			acl_load_string("t", text, err, sizeof(err));
		CHECK(a != NULL);
		if (!a)
			continue;
		struct acl_cache *c = acl_cache_new(a);
		acl_rules_unref(a);
		struct acl_identity *id = acl_cache_get(c, NULL, "c");
		acl_cache_unref(c);
		CHECK(id != NULL);
		for (int k = 0; id && k < g.nt; k++) {
			const char *t = g.topics[k];
			bool want = matches(g.filters[i], t);
			if (acl_check(id, t, strlen(t), ACL_READ) != want) {
				fprintf(stderr, "  rule \"%s\" topic \"%s\": "
						"acl %d\n",
					g.filters[i], t, !want);
				*test_failed_ |= TEST_FAILED;
			}
		}
		if (id)
			acl_identity_unref(id);
	}
}
