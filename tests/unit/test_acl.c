/* ACL module: Mosquitto 2.0 acl_file semantics plus kite's differences
 * (acl/acl.h). Every test builds its rules from text. */
#include "acl/acl.h"
#include "runner.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

/* The rules of text, or NULL with the error printed. */
static struct acl_rules *load(const char *text)
{
	char err[256];
	struct acl_rules *a = acl_load_string("test.acl", text, err, sizeof(err));
	if (!a)
		fprintf(stderr, "  load failed: %s\n", err);
	return a;
}

/* One identity over text, with its own cache (dropped at unref). */
static struct acl_identity *ident(const char *text, const char *user,
				  const char *cid)
{
	struct acl_rules *a = load(text);
	if (!a)
		return NULL;
	struct acl_cache *c = acl_cache_new(a);
	acl_rules_unref(a);
	struct acl_identity *id = acl_cache_get(c, user, cid);
	acl_cache_unref(c);
	return id;
}

static bool can(const struct acl_identity *id, const char *topic, int access)
{
	return acl_check(id, topic, strlen(topic), (enum acl_access)access);
}

static bool may(const struct acl_identity *id, const char *filter)
{
	return acl_filter_may_match(id, filter, strlen(filter));
}

TEST(acl_seed_gateway_pattern_grants_own_subtree_only)
{
	struct acl_identity *id =
		ident("pattern readwrite +/gateway/%u/#\n", "gw1", "c1");
	CHECK(id);
	if (!id)
		return;
	CHECK(can(id, "site1/gateway/gw1/status", ACL_WRITE));
	CHECK(can(id, "site2/gateway/gw1", ACL_READ));
	CHECK(can(id, "/gateway/gw1/x", ACL_READ)); /* '+' matches "" */
	CHECK(!can(id, "site1/gateway/gw2/status", ACL_WRITE));
	CHECK(!can(id, "site1/x/gateway/gw1", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_seed_application_pattern)
{
	struct acl_identity *id =
		ident("pattern readwrite application/%u/#\n", "app7", "any");
	CHECK(can(id, "application/app7/up", ACL_WRITE));
	CHECK(can(id, "application/app7", ACL_READ));
	CHECK(!can(id, "application/app8/up", ACL_READ));
	CHECK(!can(id, "application", ACL_READ));
	acl_identity_unref(id);
}

TEST(acl_seed_user_block_topic_substitutes_username_kite)
{
	const char *f = "user Device123\ntopic readwrite /device/%u/#\n";
	struct acl_identity *id = ident(f, "Device123", "cid");
	CHECK(can(id, "/device/Device123/temp", ACL_WRITE));
	CHECK(can(id, "/device/Device123", ACL_READ));
	CHECK(!can(id, "/device/%u/temp", ACL_WRITE));
	CHECK(!can(id, "/device/Device124/temp", ACL_WRITE));
	acl_identity_unref(id);
	id = ident(f, "Device124", "cid"); /* not its block */
	CHECK(!can(id, "/device/Device124/temp", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_user_block_topic_substitutes_client_id_kite)
{
	struct acl_identity *id =
		ident("user u\ntopic write out/%c\n", "u", "dev-9");
	CHECK(can(id, "out/dev-9", ACL_WRITE));
	CHECK(!can(id, "out/dev-8", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_anonymous_section_applies_to_clients_without_username)
{
	const char *f = "# anonymous\n"
			"topic read public/#\n"
			"topic literal/%u\n"
			"user alice\n"
			"topic readwrite alice/#\n";
	struct acl_identity *anon = ident(f, NULL, "c1");
	CHECK(can(anon, "public/news", ACL_READ));
	CHECK(!can(anon, "public/news", ACL_WRITE));
	CHECK(!can(anon, "alice/x", ACL_READ));
	CHECK(can(anon, "literal/%u", ACL_WRITE)); /* anonymous: literal */
	acl_identity_unref(anon);
	struct acl_identity *alice = ident(f, "alice", "c2");
	CHECK(!can(alice, "public/news", ACL_READ));
	CHECK(can(alice, "alice/x", ACL_WRITE));
	acl_identity_unref(alice);
	struct acl_identity *bob = ident(f, "bob", "c3");
	CHECK(!can(bob, "public/news", ACL_READ));
	CHECK(!can(bob, "alice/x", ACL_READ));
	CHECK_EQ(acl_identity_rule_count(bob), 0);
	acl_identity_unref(bob);
}

TEST(acl_default_deny_once_a_file_is_set)
{
	struct acl_identity *id = ident("# nothing\n\n", "u", "c");
	CHECK(id);
	CHECK(!can(id, "a", ACL_READ));
	CHECK(!can(id, "a", ACL_WRITE));
	acl_identity_unref(id);
	id = ident("", NULL, "c");
	CHECK(!can(id, "a", ACL_READ));
	acl_identity_unref(id);
}

TEST(acl_access_keywords_and_default_readwrite)
{
	const char *f = "user u\n"
			"topic read r\n"
			"topic write w\n"
			"topic readwrite rw\n"
			"topic both\n";
	struct acl_identity *id = ident(f, "u", "c");
	CHECK(can(id, "r", ACL_READ) && !can(id, "r", ACL_WRITE));
	CHECK(!can(id, "w", ACL_READ) && can(id, "w", ACL_WRITE));
	CHECK(can(id, "rw", ACL_READ) && can(id, "rw", ACL_WRITE));
	CHECK(can(id, "both", ACL_READ) && can(id, "both", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_deny_wins_within_user_block_whatever_the_order)
{
	const char *f = "user u\n"
			"topic readwrite a/#\n"
			"topic deny a/secret/#\n";
	struct acl_identity *id = ident(f, "u", "c");
	CHECK(can(id, "a/x", ACL_WRITE));
	CHECK(!can(id, "a/secret/x", ACL_WRITE));
	CHECK(!can(id, "a/secret", ACL_READ));
	acl_identity_unref(id);
}

TEST(acl_pattern_deny_wins_over_pattern_grant)
{
	const char *f = "pattern readwrite d/%u/#\n"
			"pattern deny d/%u/admin/#\n";
	struct acl_identity *id = ident(f, "u", "c");
	CHECK(can(id, "d/u/x", ACL_WRITE));
	CHECK(!can(id, "d/u/admin/x", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_user_grant_beats_pattern_deny_like_mosquitto)
{
	/* Mosquitto checks the user's own list (deny first) and returns on a
	 * grant before looking at patterns. */
	const char *f = "user u\ntopic read x/#\n"
			"pattern deny x/%u\n";
	struct acl_identity *id = ident(f, "u", "c");
	CHECK(can(id, "x/u", ACL_READ));
	acl_identity_unref(id);
	/* ...but a user-block deny beats a pattern grant. */
	id = ident("user u\ntopic deny y/u\npattern read y/%u\n", "u", "c");
	CHECK(!can(id, "y/u", ACL_READ));
	acl_identity_unref(id);
}

TEST(acl_client_id_pattern)
{
	const char *f = "pattern write clients/%c/#\n"
			"pattern read in/%u/%c\n";
	struct acl_identity *id = ident(f, "u", "c1");
	CHECK(can(id, "clients/c1/x", ACL_WRITE));
	CHECK(!can(id, "clients/c2/x", ACL_WRITE));
	CHECK(can(id, "in/u/c1", ACL_READ));
	acl_identity_unref(id);
	id = ident(f, NULL, "c1"); /* %u patterns skip anonymous clients */
	CHECK(can(id, "clients/c1/x", ACL_WRITE));
	CHECK(!can(id, "in//c1", ACL_READ));
	CHECK(!can(id, "in/%u/c1", ACL_READ));
	acl_identity_unref(id);
}

TEST(acl_dangerous_usernames_and_client_ids_never_widen_access)
{
	const char *f = "pattern readwrite devices/%u/#\n"
			"pattern readwrite c/%c/#\n"
			"user a+b\ntopic readwrite own/#\n";
	static const char *users[] = {"+", "#", "a/b", "x/+", "a+b"};
	for (size_t i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
		struct acl_identity *id = ident(f, users[i], "cid");
		CHECK(!can(id, "devices/x/y", ACL_WRITE));
		CHECK(!can(id, "devices/a/b/c", ACL_WRITE));
		CHECK(!can(id, "devices/a", ACL_READ));
		CHECK(!may(id, "devices/#"));
		acl_identity_unref(id);
	}
	/* '+' or '#' in the username disables all patterns (Mosquitto)... */
	struct acl_identity *id = ident(f, "a+b", "cid");
	CHECK(!can(id, "c/cid/x", ACL_WRITE));
	CHECK(can(id, "own/x", ACL_WRITE)); /* its own block still applies */
	acl_identity_unref(id);
	/* ...'/' only drops the rules that substitute it (kite). */
	id = ident(f, "a/b", "cid");
	CHECK(can(id, "c/cid/x", ACL_WRITE));
	acl_identity_unref(id);
	static const char *cids[] = {"+", "#", "x/y"};
	for (size_t i = 0; i < 3; i++) {
		id = ident(f, "u", cids[i]);
		CHECK(!can(id, "c/x/y/z", ACL_WRITE));
		CHECK(!can(id, "c/x", ACL_WRITE));
		/* '+'/'#' in the client id disables every pattern. */
		CHECK_EQ(can(id, "devices/u/1", ACL_WRITE), cids[i][0] == 'x');
		acl_identity_unref(id);
	}
	id = ident(f, "u", NULL); /* no client id: no patterns */
	CHECK(!can(id, "devices/u/1", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_empty_and_odd_names_are_byte_safe)
{
	const char *f = "pattern readwrite d/%u\npattern read e/%c/x\n";
	struct acl_identity *id = ident(f, "", "");
	CHECK(can(id, "d/", ACL_WRITE)); /* "d/" + "" */
	CHECK(can(id, "e//x", ACL_READ));
	acl_identity_unref(id);
	id = ident(f, "\xff\xfe", "\xc3");
	CHECK(can(id, "d/\xff\xfe", ACL_WRITE));
	CHECK(!can(id, "d/x", ACL_WRITE));
	acl_identity_unref(id);
	/* An empty substitution matches nothing. */
	id = ident("pattern read %u\n", "", "c");
	CHECK(!can(id, "x", ACL_READ));
	acl_identity_unref(id);
}

TEST(acl_invalid_topics_match_nothing)
{
	struct acl_identity *id = ident("topic readwrite #\n", NULL, "c");
	CHECK(can(id, "a", ACL_WRITE));
	CHECK(!acl_check(id, "", 0, ACL_WRITE));
	CHECK(!can(id, "a/+", ACL_WRITE));
	CHECK(!can(id, "a/#", ACL_READ));
	CHECK(!acl_check(id, "a\0b", 3, ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_dollar_topics_need_dollar_rules)
{
	const char *f = "user u\ntopic read #\ntopic read +/x\n"
			"topic read $SYS/broker/#\n";
	struct acl_identity *id = ident(f, "u", "c");
	CHECK(can(id, "a/b", ACL_READ));
	CHECK(!can(id, "$SYS/load", ACL_READ));
	CHECK(!can(id, "$x/x", ACL_READ));
	CHECK(can(id, "$SYS/broker/uptime", ACL_READ));
	CHECK(may(id, "$SYS/#"));
	CHECK(!may(id, "$other/#"));
	acl_identity_unref(id);
}

/* Filter rule x topic -> match, per MQTT 4.7 and mosquitto_topic_matches_sub */
TEST(acl_wildcard_rules_match_like_mosquitto)
{
	static const struct {
		const char *rule, *topic;
		bool match;
	} cases[] = {
		{"a/b", "a/b", true},	   {"a/b", "a/b/c", false},
		{"a/b", "a", false},	   {"a/+", "a/b", true},
		{"a/+", "a/", true},	   {"a/+", "a", false},
		{"a/+", "a/b/c", false},   {"+", "a", true},
		{"+", "a/b", false},	   {"+/+", "/", true},
		{"a/#", "a", true},	   {"a/#", "a/b/c", true},
		{"a/#", "ab", false},	   {"#", "a/b", true},
		{"#", "/", true},	   {"a/+/#", "a/b", true},
		{"a/+/#", "a", false},	   {"a/+/c", "a/b/c", true},
		{"a//b", "a//b", true},	   {"a//b", "a/b", false},
		{"a/", "a/", true},	   {"a/", "a", false},
		{"/a", "/a", true},	   {"+/a", "/a", true},
		{"a b/c", "a b/c", true},  {"a/b", "a/bc", false},
		{"ab", "a", false},	   {"a/+/c", "a/b/d", false},
		{"$SYS/#", "$SYS", true},  {"+/#", "$SYS/a", false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char f[128];
		snprintf(f, sizeof(f), "topic readwrite %s\n", cases[i].rule);
		struct acl_identity *id = ident(f, NULL, "c");
		bool got = can(id, cases[i].topic, ACL_READ);
		if (got != cases[i].match)
			fprintf(stderr, "  rule \"%s\" topic \"%s\": got %d\n",
				cases[i].rule, cases[i].topic, got);
		CHECK(got == cases[i].match);
		acl_identity_unref(id);
	}
}

TEST(acl_filter_may_match_cases)
{
	const char *f = "user u\n"
			"topic read sensors/+/temp\n"
			"topic write cmd/#\n"
			"topic deny sensors/secret/temp\n"
			"pattern read home/%u/#\n";
	struct acl_identity *id = ident(f, "u", "c");
	static const struct {
		const char *filter;
		bool may;
	} cases[] = {
		{"sensors/#", true},	    {"sensors/+/temp", true},
		{"sensors/a/temp", true},   {"sensors/a/hum", false},
		{"sensors/+", false},	    {"sensors", false},
		{"other/#", false},	    {"#", true},
		{"+/+/temp", true},	    {"+/+/+/+", true},
		{"+", false},		    {"cmd/#", false},
		{"home/u", true},	    {"home/u/a/b", true},
		{"home/v/#", false},	    {"home/+", true},
		{"$share/g/sensors/#", true}, {"$share/g/other/#", false},
		{"$SYS/#", false},	    {"sensors/a/temp/x", false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool got = may(id, cases[i].filter);
		if (got != cases[i].may)
			fprintf(stderr, "  filter \"%s\": got %d\n",
				cases[i].filter, got);
		CHECK(got == cases[i].may);
	}
	acl_identity_unref(id);
}

TEST(acl_filter_wholly_denied_is_refused)
{
	const char *f = "user u\n"
			"topic read a/#\n"
			"topic deny a/secret\n"
			"topic deny a/priv/#\n"
			"topic deny a/+/hidden\n"
			"pattern read p/#\n"
			"pattern deny p/%u/x/#\n"
			"pattern deny $SYS/#\n";
	struct acl_identity *id = ident(f, "u", "c");
	static const struct {
		const char *filter;
		bool may;
	} cases[] = {
		{"a/secret", false},	{"a/secret/x", true},
		{"a/priv", false},	{"a/priv/#", false},
		{"a/priv/x/y", false},	{"a/+", true},
		{"a/#", true},		{"a/x/hidden", false},
		{"a/+/hidden", false},	{"a/+/hidden/#", true},
		{"a/x/hidden/#", true}, {"p/u/x", false},
		{"p/u/x/#", false},	{"p/u/+", true},
		{"p/v/x", true},	{"$SYS/x", false},
		{"$share/g/a/secret", false}, {"$share/g/a/open", true},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool got = may(id, cases[i].filter);
		if (got != cases[i].may)
			fprintf(stderr, "  filter \"%s\": got %d\n",
				cases[i].filter, got);
		CHECK(got == cases[i].may);
	}
	acl_identity_unref(id);
	/* A pattern deny gives way to the client's own grant (phase 1). */
	id = ident("user u\ntopic read q/#\npattern deny q/#\n", "u", "c");
	CHECK(may(id, "q/x"));
	acl_identity_unref(id);
}

TEST(acl_subscribe_check_always_allowed_like_mosquitto_2_0)
{
	struct acl_identity *id = ident("topic read a\n", "u", "c");
	CHECK(can(id, "anything/#", ACL_SUBSCRIBE));
	CHECK(!can(id, "a", ACL_READ)); /* u has no block */
	acl_identity_unref(id);
}

TEST(acl_mosquitto_syntax_quirks)
{
	const char *f = "  user   spaced name  \r\n"
			"topic read\r\n"		/* filter "read", rw */
			"topic   write    has spaces/x   \n"
			"\n"
			"   \t \n"
			"#topic readwrite commented/out\n"
			"user other\n"
			"topic write o\n"
			"user spaced name\n"		/* continues the block */
			"topic deny has spaces/x\n";
	struct acl_identity *id = ident(f, "spaced name", "c");
	CHECK(id);
	if (!id)
		return;
	CHECK(can(id, "read", ACL_READ) && can(id, "read", ACL_WRITE));
	CHECK(!can(id, "has spaces/x", ACL_WRITE));
	CHECK(!can(id, "commented/out", ACL_READ));
	CHECK(!can(id, "o", ACL_WRITE));
	acl_identity_unref(id);
}

TEST(acl_syntax_errors_report_file_and_line)
{
	static const struct {
		const char *text, *err;
	} cases[] = {
		{"topic a\ntopic foo bar\n", "test.acl:2: invalid access type"},
		{"\n\nuser\n", "test.acl:3: missing username"},
		{"topic read a\nbogus line\n", "test.acl:2: invalid line"},
		{"topic read a/#/b\n", "test.acl:1: invalid topic filter"},
		{"topic read a+\n", "test.acl:1: invalid topic filter"},
		{"pattern\n", "test.acl:1: empty topic"},
		{"topic\tread a\n", "test.acl:1: invalid line"},
		{" # indented comment\n", "test.acl:1: invalid line"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[256] = "";
		struct acl_rules *a = acl_load_string("test.acl", cases[i].text,
						      err, sizeof(err));
		CHECK(!a);
		if (strncmp(err, cases[i].err, strlen(cases[i].err))) {
			fprintf(stderr, "  case %zu: \"%s\"\n", i, err);
			CHECK(0);
		}
		acl_rules_unref(a);
	}
	char err[256];
	CHECK(!acl_load("/nonexistent/kite.acl", err, sizeof(err)));
	CHECK(strstr(err, "/nonexistent/kite.acl: ") == err);
}

TEST(acl_load_file_and_nul_bytes)
{
	char path[] = "/tmp/kite-acl-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	static const char text[] = "user u\ntopic read a\ntopic b\0c\n";
	CHECK(write(fd, text, sizeof(text) - 1) == (ssize_t)sizeof(text) - 1);
	close(fd);
	char err[256];
	struct acl_rules *a = acl_load(path, err, sizeof(err));
	CHECK(!a);
	CHECK(strstr(err, ":3: NUL byte"));
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(write(fd, text, 20) == 20);
	close(fd);
	a = acl_load(path, err, sizeof(err));
	CHECK(a);
	if (a) {
		struct acl_cache *c = acl_cache_new(a);
		struct acl_identity *id = acl_cache_get(c, "u", "c");
		CHECK(can(id, "a", ACL_READ));
		acl_identity_unref(id);
		acl_cache_unref(c);
		acl_rules_unref(a);
	}
	unlink(path);
}

TEST(acl_cache_shares_identities_unless_client_id_is_used)
{
	struct acl_rules *a = load("pattern readwrite d/%u/#\n");
	struct acl_cache *c = acl_cache_new(a);
	struct acl_identity *x = acl_cache_get(c, "u", "c1");
	struct acl_identity *y = acl_cache_get(c, "u", "c2");
	struct acl_identity *z = acl_cache_get(c, "v", "c1");
	struct acl_identity *w = acl_cache_get(c, "u", "c+"); /* no patterns */
	CHECK(x && x == y);
	CHECK(z != x);
	CHECK(w != x && !can(w, "d/u/1", ACL_WRITE));
	acl_identity_unref(x);
	acl_identity_unref(y);
	acl_identity_unref(z);
	acl_identity_unref(w);
	acl_cache_unref(c);
	acl_rules_unref(a);

	a = load("pattern readwrite d/%c/#\n");
	c = acl_cache_new(a);
	acl_rules_unref(a); /* the cache holds its own reference */
	x = acl_cache_get(c, "u", "c1");
	y = acl_cache_get(c, "u", "c2");
	CHECK(x != y);
	CHECK(can(x, "d/c1/a", ACL_WRITE) && !can(x, "d/c2/a", ACL_WRITE));
	CHECK(can(y, "d/c2/a", ACL_WRITE));
	acl_identity_unref(x);
	/* Dropping the cache keeps identities usable until their unref. */
	acl_cache_unref(c);
	CHECK(can(y, "d/c2/a", ACL_WRITE));
	acl_identity_unref(y);
}

TEST(acl_cache_evicts_identity_at_last_unref)
{
	struct acl_rules *a = load("pattern readwrite d/%c\n");
	struct acl_cache *c = acl_cache_new(a);
	for (int i = 0; i < 1000; i++) {
		char cid[32];
		snprintf(cid, sizeof(cid), "client-%d", i);
		struct acl_identity *id = acl_cache_get(c, "u", cid);
		acl_identity_ref(id);
		acl_identity_unref(id);
		char t[40];
		snprintf(t, sizeof(t), "d/%s", cid);
		CHECK(can(id, t, ACL_WRITE));
		acl_identity_unref(id);
	}
	acl_cache_unref(c); /* asserts the map is empty; ASan sees leaks */
	acl_rules_unref(a);
}

struct cache_thread {
	struct acl_cache *c;
	int seed;
	int bad;
};

static void *cache_thread_run(void *arg)
{
	struct cache_thread *t = arg;
	struct acl_identity *held[8] = {0};
	for (int i = 0; i < 20000; i++) {
		int k = (t->seed * 7919 + i * 104729) % 8;
		char user[16], topic[48];
		snprintf(user, sizeof(user), "dev-%d", k);
		if (held[k]) {
			acl_identity_unref(held[k]);
			held[k] = NULL;
			continue;
		}
		held[k] = acl_cache_get(t->c, user, (i & 1) ? "a" : "b");
		snprintf(topic, sizeof(topic), "devices/%s/x", user);
		if (!held[k] || !can(held[k], topic, ACL_WRITE) ||
		    can(held[k], "devices/other/x", ACL_WRITE))
			t->bad++;
	}
	for (int k = 0; k < 8; k++)
		acl_identity_unref(held[k]);
	return NULL;
}

TEST(acl_cache_get_is_thread_safe)
{
	struct acl_rules *a = load("pattern readwrite devices/%u/#\n"
				   "user dev-3\ntopic read extra/#\n");
	struct acl_cache *c = acl_cache_new(a);
	pthread_t th[4];
	struct cache_thread t[4];
	for (int i = 0; i < 4; i++) {
		t[i] = (struct cache_thread){.c = c, .seed = i + 1};
		pthread_create(&th[i], NULL, cache_thread_run, &t[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ(t[i].bad, 0);
	}
	acl_cache_unref(c);
	acl_rules_unref(a);
}

TEST(acl_many_users_each_get_their_own_block)
{
	size_t n = 20000, cap = n * 64;
	char *text = malloc(cap), *p = text;
	for (size_t i = 0; i < n; i++)
		p += snprintf(p, cap - (size_t)(p - text),
			      "user device-%zu\ntopic readwrite devices/%%u/#\n",
			      i);
	struct acl_rules *a = load(text);
	free(text);
	CHECK(a);
	if (!a)
		return;
	struct acl_cache *c = acl_cache_new(a);
	for (size_t i = 0; i < n; i += 997) {
		char u[32], t[64], o[64];
		snprintf(u, sizeof(u), "device-%zu", i);
		snprintf(t, sizeof(t), "devices/device-%zu/up", i);
		snprintf(o, sizeof(o), "devices/device-%zu/up", i + 1);
		struct acl_identity *id = acl_cache_get(c, u, "c");
		CHECK(can(id, t, ACL_WRITE) && !can(id, o, ACL_WRITE));
		CHECK_EQ(acl_identity_rule_count(id), 1);
		acl_identity_unref(id);
	}
	acl_cache_unref(c);
	acl_rules_unref(a);
}

static bool readable(const struct acl_identity *id, const char *filter)
{
	return acl_filter_fully_readable(id, filter, strlen(filter));
}

TEST(acl_filter_fully_readable_cases)
{
	const char *f = "user u\n"
			"topic read sensors/+/temp\n"
			"topic write cmd/#\n"
			"topic deny sensors/secret/temp\n"
			"topic read all/#\n"
			"pattern read home/%u/#\n"
			"pattern deny home/%u/private\n";
	struct acl_identity *id = ident(f, "u", "c");
	static const struct {
		const char *filter;
		bool full;
	} cases[] = {
		{"sensors/a/temp", true},   {"sensors/+/temp", false}, /* deny */
		{"sensors/secret/temp", false}, {"sensors/#", false},
		{"cmd/#", false},	    {"cmd/x", false},  /* write only */
		{"all", true},		    {"all/#", true},
		{"all/+/x", true},	    {"+/x", false},
		{"home/u/a", true},	    {"home/u/#", false}, /* deny */
		{"home/u/private", false},  {"#", false},
		{"$SYS/x", false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool got = readable(id, cases[i].filter);
		if (got != cases[i].full)
			fprintf(stderr, "  filter \"%s\": got %d\n",
				cases[i].filter, got);
		CHECK(got == cases[i].full);
	}
	acl_identity_unref(id);
	id = ident("pattern read home/%u/#\n", "u", "c");
	CHECK(readable(id, "home/u/a/#"));
	CHECK(readable(id, "home/u"));
	CHECK(!readable(id, "home/+/a"));
	acl_identity_unref(id);
	id = ident("topic read #\n", NULL, "c");
	CHECK(readable(id, "#"));
	CHECK(readable(id, "+/x"));
	CHECK(!readable(id, "$SYS/#")); /* '#' reaches no '$' topic */
	acl_identity_unref(id);
}

/* Whether filter f matches topic t (levels split at '/'; a topic whose
 * first level starts with '$' is not matched by a wildcard there). */
static bool model_match(const char *f, const char *t)
{
	if (t[0] == '$' && (f[0] == '+' || f[0] == '#'))
		return false;
	for (;;) {
		const char *fe = strchr(f, '/'), *te = strchr(t, '/');
		size_t fl = fe ? (size_t)(fe - f) : strlen(f);
		size_t tl = te ? (size_t)(te - t) : strlen(t);
		if (fl == 1 && f[0] == '#')
			return true;
		if (!(fl == 1 && f[0] == '+') && (fl != tl || memcmp(f, t, fl)))
			return false;
		if (!fe && !te)
			return true;
		if (!te) /* "a" matches "a/#" */
			return !strcmp(fe + 1, "#");
		if (!fe)
			return false;
		f = fe + 1;
		t = te + 1;
	}
}

/* Every "a"-"b"-"$s"-"" path of 1..depth levels into out, joined by '/'. */
static size_t paths(const char *const *alpha, size_t na, size_t depth,
		    char out[][16], size_t max)
{
	size_t n = 0;
	for (size_t d = 1; d <= depth; d++) {
		size_t total = 1;
		for (size_t i = 0; i < d; i++)
			total *= na;
		for (size_t k = 0; k < total && n < max; k++) {
			char buf[16] = "";
			size_t x = k;
			for (size_t i = 0; i < d; i++) {
				const char *lv = alpha[x % na];
				x /= na;
				if (i && lv[0] == '$')
					lv = "c";
				if (i)
					strcat(buf, "/");
				strcat(buf, lv);
			}
			/* '#' only last */
			char *h = strchr(buf, '#');
			if (h && h[1])
				continue;
			strcpy(out[n++], buf);
		}
	}
	return n;
}

TEST(acl_filter_fully_readable_is_sound)
{
	/* Never "fully readable" when some topic of the filter is refused:
	 * every filter and topic of up to three levels over a small
	 * alphabet, against rule sets mixing grants, denies and patterns. */
	static const char *const rules[] = {
		"topic read a/#\ntopic deny a/b\n",
		"topic read +/b\npattern read #\npattern deny b/+\n",
		"topic read a/+/b\ntopic read a/b/#\n",
		"pattern read +/+\npattern read $s/#\n",
		"topic readwrite #\ntopic deny +/a/#\n",
		"topic write #\npattern read a\n",
	};
	static const char *const tl[] = {"a", "b", "$s", ""};
	static const char *const fl[] = {"a", "b", "$s", "", "+", "#"};
	static char topics[128][16], filters[400][16];
	size_t nt = paths(tl, 4, 3, topics, 128);
	size_t nf = paths(fl, 6, 3, filters, 400);
	for (size_t r = 0; r < sizeof(rules) / sizeof(rules[0]); r++) {
		struct acl_identity *id = ident(rules[r], NULL, "c");
		CHECK(id);
		if (!id)
			continue;
		size_t full = 0;
		for (size_t i = 0; i < nf; i++) {
			if (!readable(id, filters[i]))
				continue;
			full++;
			for (size_t j = 0; j < nt; j++) {
				/* A topic name is never empty (spec 4.7.3). */
				if (!topics[j][0] ||
				    !model_match(filters[i], topics[j]) ||
				    can(id, topics[j], ACL_READ))
					continue;
				fprintf(stderr, "  rules %zu: \"%s\" fully readable "
					"but \"%s\" refused\n", r, filters[i],
					topics[j]);
				CHECK(false);
			}
		}
		CHECK(full > 0 || r == 5);
		acl_identity_unref(id);
	}
}
