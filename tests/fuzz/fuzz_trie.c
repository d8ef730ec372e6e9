/* libFuzzer target for the matchers: trie_match, gtrie_match, retain_match,
 * an ACL rule and topic_matches must agree; topic_filters_intersect and
 * topic_filter_covers must hold for every topic the input names; and
 * subscribe/unsubscribe (add/remove, set/clear) sequences must leave no
 * filter and no node behind.
 *
 * Input: byte 0 picks a shard; the rest splits on NUL bytes into a filter,
 * a topic, then up to EXTRA_MAX extra strings. Each extra is subscribed
 * when it is a valid filter and retained when it is a valid topic, so the
 * matchers are compared on a populated structure, not only one pair. */
#include "acl/acl.h"
#include "core/gtrie.h"
#include "core/retain.h"
#include "core/topic.h"
#include "core/trie.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <urcu/urcu-qsbr.h>

#define EXTRA_MAX 32

#define FUZZ_CHECK(c)                                                        \
	do {                                                                  \
		if (!(c)) {                                                   \
			fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n",     \
				__FILE__, __LINE__, #c);                      \
			abort();                                              \
		}                                                             \
	} while (0)

struct str {
	const char *s;
	size_t n;
};

struct extra {
	struct str v;
	bool filter_ok, topic_ok; /* valid and within TRIE_LEVELS_MAX */
	bool current;		  /* no later extra retains the same topic */
	bool active;
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char owners[EXTRA_MAX + 1]; /* addresses stand for sessions */
static char msgs[EXTRA_MAX + 1];   /* and for retained messages */

static void release_nop(void *msg)
{
	(void)msg; /* the messages are static */
}

static size_t depth(struct str x)
{
	size_t d = 1;

	for (size_t i = 0; i < x.n; i++)
		d += x.s[i] == '/';
	return d;
}

/* MQTT 4.7.1: '#' alone and last, '+' alone in its level. */
static bool filter_valid(struct str f)
{
	size_t start = 0;

	if (f.n == 0 || f.n > 65535)
		return false;
	for (size_t i = 0; i <= f.n; i++) {
		if (i < f.n && f.s[i] != '/')
			continue;
		for (size_t j = start; j < i; j++) {
			if ((f.s[j] == '+' || f.s[j] == '#') && i - start != 1)
				return false;
			if (f.s[j] == '#' && i != f.n)
				return false;
		}
		start = i + 1;
	}
	return true;
}

static bool topic_valid(struct str t)
{
	return t.n > 0 && t.n <= 65535 && !memchr(t.s, '+', t.n) &&
	       !memchr(t.s, '#', t.n);
}

static bool matches(struct str f, struct str t)
{
	return topic_matches(f.s, f.n, t.s, t.n);
}

static void count_cb(void *ctx, const struct trie_sub *s)
{
	(void)s;
	(*(int *)ctx)++;
}

static void count_msg_cb(void *ctx, void *msg)
{
	(void)msg;
	(*(int *)ctx)++;
}

/* The ACL's grant of "topic read F" is topic_matches: its fast paths
 * (literal prefix, "prefix/#") change nothing. The parser trims blanks and
 * reads one line, so only filters it keeps whole are compared. */
static void check_acl(struct str f, struct str t, bool want)
{
	char text[600], err[256];

	if (f.n > 512 || memchr(f.s, '\n', f.n) || memchr(f.s, '\r', f.n) ||
	    isspace((unsigned char)f.s[0]) ||
	    isspace((unsigned char)f.s[f.n - 1]) ||
	    (f.n >= 7 && memcmp(f.s, "$share/", 7) == 0) || f.s[0] == '#' ||
	    memchr(t.s, 0, t.n))
		return;
	snprintf(text, sizeof(text), "topic read %.*s\n", (int)f.n, f.s);
	struct acl_rules *a = acl_load_string("f", text, err, sizeof(err));
	if (!a)
		return; /* a filter the ACL refuses (e.g. %u) */
	struct acl_cache *c = acl_cache_new(a);
	acl_rules_unref(a);
	FUZZ_CHECK(c);
	struct acl_identity *id = acl_cache_get(c, NULL, "c");
	acl_cache_unref(c);
	FUZZ_CHECK(id);
	FUZZ_CHECK(acl_check(id, t.s, t.n, ACL_READ) == want);
	acl_identity_unref(id);
}

/* Filter relations against one topic that a names: when it matches a
 * and b, they intersect; when covers(a, b), b's matches are a's. */
static void check_relations(struct str a, struct str b, struct str t)
{
	bool ma = matches(a, t), mb = matches(b, t);

	if (ma && mb)
		FUZZ_CHECK(topic_filters_intersect(a.s, a.n, b.s, b.n) &&
			   topic_filters_intersect(b.s, b.n, a.s, a.n));
	if (mb && !ma)
		FUZZ_CHECK(!topic_filter_covers(a.s, a.n, b.s, b.n));
	if (ma && !mb)
		FUZZ_CHECK(!topic_filter_covers(b.s, b.n, a.s, a.n));
}

/* One filter alone, one topic alone: the four answers agree, and removing
 * the filter and topic empties every structure. */
static void check_pair(struct str f, struct str t, unsigned shard)
{
	bool want = matches(f, t);
	check_acl(f, t, want);
	bool f_fits = depth(f) <= TRIE_LEVELS_MAX;
	bool t_fits = depth(t) <= TRIE_LEVELS_MAX;
	struct trie_sub sub = {&owners[0], 0, 0};
	struct trie *tr = trie_new();
	struct gtrie *g = gtrie_new();
	struct retain_store *r = retain_new(release_nop);
	int n = 0;

	FUZZ_CHECK(tr && g && r);
	FUZZ_CHECK(trie_subscribe(tr, f.s, f.n, &sub) ==
		   (f_fits ? TRIE_ADDED_FIRST : TRIE_TOO_DEEP));
	FUZZ_CHECK(gtrie_add(g, f.s, f.n, shard) == (f_fits ? 0 : -1));
	FUZZ_CHECK(retain_set(r, t.s, t.n, &msgs[0]) == (t_fits ? 0 : -1));
	if (f_fits) {
		trie_match(tr, t.s, t.n, count_cb, &n);
		FUZZ_CHECK(n == want);
		FUZZ_CHECK(gtrie_match(g, t.s, t.n) ==
			   (want ? UINT64_C(1) << shard : 0));
	}
	if (f_fits && t_fits) {
		n = 0;
		retain_match(r, f.s, f.n, count_msg_cb, &n);
		FUZZ_CHECK(n == want);
	}
	if (f_fits)
		FUZZ_CHECK(trie_unsubscribe(tr, f.s, f.n, &owners[0]) ==
			   TRIE_REMOVED_LAST);
	FUZZ_CHECK(gtrie_remove(g, f.s, f.n, shard) == (f_fits ? 0 : -1));
	FUZZ_CHECK(retain_set(r, t.s, t.n, NULL) == (t_fits ? 0 : -1));
	FUZZ_CHECK(trie_filter_count(tr) == 0 && trie_node_count(tr) == 0);
	FUZZ_CHECK(gtrie_node_count(g) == 0);
	FUZZ_CHECK(retain_count(r) == 0 && retain_node_count(r) == 0);
	trie_free(tr);
	gtrie_free(g);
	retain_free(r);
}

/* Compares the populated structures with what topic_matches predicts for
 * the active extras. */
static void check_state(const struct trie *tr, const struct gtrie *g,
			struct retain_store *r, const struct extra *x, int nx,
			struct str f, struct str t)
{
	int want_subs = 0, want_msgs = 0, n = 0;
	uint64_t want_mask = 0;

	for (int k = 0; k < nx; k++) {
		if (!x[k].active)
			continue;
		if (x[k].filter_ok)
			check_relations(f, x[k].v, t);
		if (x[k].filter_ok && matches(x[k].v, t)) {
			want_subs++;
			want_mask |= UINT64_C(1) << k;
		}
		if (x[k].topic_ok && x[k].current && matches(f, x[k].v))
			want_msgs++;
	}
	trie_match(tr, t.s, t.n, count_cb, &n);
	FUZZ_CHECK(n == want_subs);
	FUZZ_CHECK(gtrie_match(g, t.s, t.n) == want_mask);
	if (depth(f) <= TRIE_LEVELS_MAX) {
		n = 0;
		retain_match(r, f.s, f.n, count_msg_cb, &n);
		FUZZ_CHECK(n == want_msgs);
	}
}

static void extra_apply(struct trie *tr, struct gtrie *g,
			struct retain_store *r, struct extra *x, int k, bool on)
{
	struct trie_sub sub = {&owners[k + 1], 0, (uint32_t)k};
	struct str v = x[k].v;

	if (x[k].filter_ok && on) {
		enum trie_result res = trie_subscribe(tr, v.s, v.n, &sub);
		FUZZ_CHECK(res == TRIE_ADDED_FIRST || res == TRIE_ADDED);
		FUZZ_CHECK(gtrie_add(g, v.s, v.n, (unsigned)k) == 0);
	} else if (x[k].filter_ok) {
		enum trie_result res = trie_unsubscribe(tr, v.s, v.n, sub.owner);
		FUZZ_CHECK(res == TRIE_REMOVED || res == TRIE_REMOVED_LAST);
		FUZZ_CHECK(gtrie_remove(g, v.s, v.n, (unsigned)k) == 0);
	}
	/* Only the current holder of a topic sets or clears it, so a
	 * duplicate earlier in the list never clears a later message. */
	if (x[k].topic_ok && x[k].current)
		FUZZ_CHECK(retain_set(r, v.s, v.n, on ? &msgs[k + 1] : NULL) == 0);
	x[k].active = on;
}

static void check_churn(struct extra *x, int nx, struct str f, struct str t)
{
	struct trie *tr = trie_new();
	struct gtrie *g = gtrie_new();
	struct retain_store *r = retain_new(release_nop);

	FUZZ_CHECK(tr && g && r);
	for (int k = 0; k < nx; k++)
		extra_apply(tr, g, r, x, k, true);
	check_state(tr, g, r, x, nx, f, t);
	for (int k = 1; k < nx; k += 2)
		extra_apply(tr, g, r, x, k, false);
	check_state(tr, g, r, x, nx, f, t);
	for (int k = nx - 1; k >= 0; k--)
		if (x[k].active)
			extra_apply(tr, g, r, x, k, false);
	FUZZ_CHECK(trie_filter_count(tr) == 0 && trie_node_count(tr) == 0);
	FUZZ_CHECK(gtrie_node_count(g) == 0);
	FUZZ_CHECK(retain_count(r) == 0 && retain_node_count(r) == 0);
	trie_free(tr);
	gtrie_free(g);
	retain_free(r);
}

/* Reclamation is deferred: call_rcu frees on liburcu's thread, batched
 * every ~10 ms, after the input that unlinked the memory. libFuzzer's
 * per-input leak check runs whenever an input allocated more than it freed,
 * so it would fire on nearly every input at 20x the input's cost. It is
 * turned off unless asked for; LSan still checks the whole process at
 * exit and fails the run on a leak. */
static char *args[128];
static char no_leak_check[] = "-detect_leaks=0";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* gtrie and retain calls need a registered, online thread. */
	urcu_qsbr_register_thread();
	for (int i = 0; i < *argc; i++)
		if (strncmp((*argv)[i], "-detect_leaks=", 14) == 0)
			return 0;
	if (*argc + 2 > (int)(sizeof(args) / sizeof(args[0])))
		return 0;
	memcpy(args, *argv, (size_t)*argc * sizeof(args[0]));
	args[(*argc)++] = no_leak_check;
	args[*argc] = NULL;
	*argv = args; /* libFuzzer parses flags after this returns */
	return 0;
}

static int split(const uint8_t *data, size_t size, struct str *parts, int max)
{
	int n = 0;
	const char *s = (const char *)data, *end = s + size;

	while (n < max && s <= end) {
		const char *nul = memchr(s, 0, (size_t)(end - s));
		const char *e = nul ? nul : end;

		parts[n++] = (struct str){s, (size_t)(e - s)};
		if (!nul)
			break;
		s = nul + 1;
	}
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct str parts[2 + EXTRA_MAX];
	struct extra x[EXTRA_MAX];

	if (size < 1)
		return 0;
	int np = split(data + 1, size - 1, parts, 2 + EXTRA_MAX);
	if (np < 2 || !filter_valid(parts[0]) || !topic_valid(parts[1]))
		return 0;
	check_pair(parts[0], parts[1], data[0] & 63);
	int nx = np - 2;
	for (int k = 0; k < nx; k++) {
		struct str v = parts[2 + k];
		bool fits = depth(v) <= TRIE_LEVELS_MAX;
		x[k] = (struct extra){v, filter_valid(v) && fits,
				      topic_valid(v) && fits, true, false};
		for (int j = 0; j < k; j++)
			if (x[j].v.n == v.n && memcmp(x[j].v.s, v.s, v.n) == 0)
				x[j].current = false;
	}
	check_churn(x, nx, parts[0], parts[1]);
	/* Lets the call_rcu thread free what this input unlinked. */
	urcu_qsbr_quiescent_state();
	return 0;
}
