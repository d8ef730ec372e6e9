/* ACL files: parse (Mosquitto 2.0 syntax), compile one identity's rules,
 * check topics. Semantics and the deliberate differences are in acl.h. */
#include "acl/acl.h"
#include "acl/acl_util.h"
#include "core/htab.h"
#include "core/topic.h"

#include <assert.h>
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ACL_DENY 0 /* access of a "deny" rule (Mosquitto's MOSQ_ACL_NONE) */
#define SUBST_U 1  /* the filter contains %u */
#define SUBST_C 2  /* the filter contains %c */

static_assert((ACL_READ | ACL_WRITE | ACL_SUBSCRIBE) == 7, "access bits");
static_assert(ACL_IDENTITY_RULES_MAX <= UINT32_MAX, "rule counts are u32");

/* One line of the file, as written (before %u/%c substitution). */
struct acl_rule {
	char *filter;
	uint32_t len;
	uint8_t access; /* ACL_READ|ACL_WRITE, or ACL_DENY */
	uint8_t subst;	/* SUBST_U | SUBST_C */
};

struct rule_list {
	struct acl_rule *v;
	uint32_t n, cap;
	uint8_t subst; /* union of the rules' subst */
};

struct acl_block {
	char *username; /* NULL for the anonymous block */
	struct rule_list rules;
	struct htab_link link;
};

struct acl_rules {
	atomic_uint refs;
	struct acl_block anon;
	struct htab users; /* username -> block */
	struct rule_list patterns;
};

/* A rule of one identity, substituted. Denies first within each phase. */
struct id_rule {
	const char *filter;
	uint32_t len;
	uint32_t prefix; /* bytes before the first wildcard */
	uint8_t access;
	uint8_t kind; /* RULE_LITERAL, RULE_PREFIX_HASH or RULE_GENERAL */
};

#define RULE_LITERAL 0	   /* no wildcard: equality */
#define RULE_PREFIX_HASH 1 /* "literal/#" or "#" */
#define RULE_GENERAL 2

struct acl_identity {
	atomic_uint refs;
	struct acl_cache *cache;
	struct htab_link link;
	const char *key; /* points into pool */
	size_t keylen;
	/* rules[0..n_deny1) deny, then grants, for phase 1 (the user's own
	 * block) and phase 2 (patterns). */
	uint32_t n_deny1, n_grant1, n_deny2, n_grant2;
	struct id_rule *rules;
	char pool[]; /* rules array, key and filters */
};

struct acl_cache {
	atomic_uint refs; /* the owner's + one per live identity */
	struct acl_rules *rules;
	pthread_mutex_t lock;
	struct htab ids; /* key -> identity */
};

/* ---------------------------------------------------------------- matching */

/* Mosquitto's mosquitto_sub_topic_check: '+' and '#' alone in their level,
 * '#' last. Also refuses empty filters and NUL bytes. */
static bool filter_valid(const char *f, size_t len)
{
	if (len == 0 || len > ACL_STRING_MAX || memchr(f, '\0', len))
		return false;
	for (size_t i = 0; i < len; i++) {
		if (f[i] != '+' && f[i] != '#')
			continue;
		if (i > 0 && f[i - 1] != '/')
			return false;
		if (i + 1 < len && f[i + 1] != '/')
			return false;
		if (f[i] == '#' && i + 1 != len)
			return false;
	}
	return true;
}

static bool topic_valid(const char *t, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (t[i] == '+' || t[i] == '#' || t[i] == '\0')
			return false;
	return true;
}

/* topic_matches() with a quick reject on the literal prefix: most rules
 * of an identity fail on their first bytes. */
static bool rule_matches(const struct id_rule *r, const char *t, size_t tl)
{
	if (r->prefix <= tl) {
		if (memcmp(r->filter, t, r->prefix))
			return false;
		if (r->kind == RULE_LITERAL)
			return tl == r->len;
		if (r->kind == RULE_PREFIX_HASH && r->prefix > 0)
			return true;
	} else if (r->kind == RULE_LITERAL) {
		return false;
	}
	return topic_matches(r->filter, r->len, t, tl);
}

bool acl_check(const struct acl_identity *id, const char *topic, size_t len,
	       enum acl_access access)
{
	assert(id);
	if (access & ACL_SUBSCRIBE)
		return true; /* Mosquitto 2.0: reads are checked at delivery */
	if (!topic_valid(topic, len))
		return false;
	const struct id_rule *r = id->rules;
	uint32_t phase[4] = {id->n_deny1, id->n_grant1, id->n_deny2,
			     id->n_grant2};
	for (int p = 0; p < 4; p++) {
		bool deny = (p & 1) == 0;
		for (uint32_t k = 0; k < phase[p]; k++, r++) {
			if (!deny && !(r->access & access))
				continue;
			if (rule_matches(r, topic, len))
				return !deny;
		}
	}
	return false;
}

bool acl_filter_fully_readable(const struct acl_identity *id,
			       const char *filter, size_t len)
{
	assert(id);
	if (len == 0)
		return false;
	/* acl_check's phases: a deny of the user's block that could match
	 * any topic of the filter, or none of its read grants covering the
	 * filter, sends the question to the patterns, judged the same way. */
	const struct id_rule *r = id->rules;
	uint32_t phase[4] = {id->n_deny1, id->n_grant1, id->n_deny2,
			     id->n_grant2};
	for (int p = 0; p < 4; p++) {
		bool deny = (p & 1) == 0, covered = false;
		for (uint32_t k = 0; k < phase[p]; k++, r++) {
			if (deny && topic_filters_intersect(r->filter, r->len,
							    filter, len))
				return false;
			if (!deny && (r->access & ACL_READ) &&
			    topic_filter_covers(r->filter, r->len, filter, len))
				covered = true;
		}
		if (covered)
			return true;
	}
	return false;
}

bool acl_filter_may_match(const struct acl_identity *id, const char *filter,
			  size_t len)
{
	assert(id);
	static const char share[] = "$share/";
	if (len > sizeof(share) - 1 && !memcmp(filter, share, sizeof(share) - 1)) {
		size_t g = topic_level_end(filter, len, sizeof(share) - 1);
		if (g == len)
			return false;
		filter += g + 1;
		len -= g + 1;
	}
	if (len == 0)
		return false;
	/* A deny of the client's own rules that covers the whole filter
	 * leaves nothing to read, whatever broader grant there is; a pattern
	 * deny does so unless one of its own grants reaches into the filter
	 * (those win over patterns). */
	const struct id_rule *r = id->rules;
	for (uint32_t k = 0; k < id->n_deny1; k++, r++)
		if (topic_filter_covers(r->filter, r->len, filter, len))
			return false;
	bool own = false;
	for (uint32_t k = 0; k < id->n_grant1; k++, r++)
		if ((r->access & ACL_READ) &&
		    topic_filters_intersect(r->filter, r->len, filter, len))
			own = true;
	if (own)
		return true;
	for (uint32_t k = 0; k < id->n_deny2; k++, r++)
		if (topic_filter_covers(r->filter, r->len, filter, len))
			return false;
	for (uint32_t k = 0; k < id->n_grant2; k++, r++)
		if ((r->access & ACL_READ) &&
		    topic_filters_intersect(r->filter, r->len, filter, len))
			return true;
	return false;
}

size_t acl_identity_rule_count(const struct acl_identity *id)
{
	return (size_t)id->n_deny1 + id->n_grant1 + id->n_deny2 + id->n_grant2;
}

/* ----------------------------------------------------------------- parsing */

static uint8_t subst_of(const char *f, size_t len)
{
	uint8_t s = 0;
	for (size_t i = 0; i + 1 < len; i++) {
		if (f[i] != '%')
			continue;
		if (f[i + 1] == 'u')
			s |= SUBST_U, i++;
		else if (f[i + 1] == 'c')
			s |= SUBST_C, i++;
	}
	return s;
}

static int rule_list_add(struct rule_list *l, const char *f, size_t len,
			 uint8_t access, bool literal)
{
	if (l->n == l->cap) {
		uint32_t cap = l->cap ? l->cap * 2 : 4;
		struct acl_rule *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -1;
		l->v = v;
		l->cap = cap;
	}
	char *copy = malloc(len + 1);
	if (!copy)
		return -1;
	memcpy(copy, f, len);
	copy[len] = '\0';
	struct acl_rule *r = &l->v[l->n++];
	r->filter = copy;
	r->len = (uint32_t)len;
	r->access = access;
	r->subst = literal ? 0 : subst_of(f, len);
	l->subst |= r->subst;
	return 0;
}

static void rule_list_free(struct rule_list *l)
{
	for (uint32_t i = 0; i < l->n; i++)
		free(l->v[i].filter);
	free(l->v);
}

static bool block_eq_cb(const struct htab_link *l, const void *name,
			size_t len)
{
	const struct acl_block *b = htab_entry(l, const struct acl_block, link);
	return strlen(b->username) == len && !memcmp(b->username, name, len);
}

static struct acl_block *block_find(const struct acl_rules *a,
				    const char *name, size_t len)
{
	struct htab_link *l = htab_find(&a->users, hash_bytes(name, len), name,
					len, block_eq_cb);
	return htab_entry(l, struct acl_block, link);
}

static void block_free_cb(struct htab_link *l)
{
	struct acl_block *b = htab_entry(l, struct acl_block, link);
	rule_list_free(&b->rules);
	free(b->username);
	free(b);
}

static struct acl_block *block_get(struct acl_rules *a, const char *name,
				   size_t len)
{
	struct acl_block *b = block_find(a, name, len);
	if (b)
		return b;
	b = calloc(1, sizeof(*b));
	if (!b || !(b->username = strndup(name, len)) ||
	    htab_insert(&a->users, &b->link, hash_bytes(name, len)) < 0) {
		if (b)
			free(b->username);
		free(b);
		return NULL;
	}
	return b;
}

static void rules_free(struct acl_rules *a)
{
	if (!a)
		return;
	rule_list_free(&a->anon.rules);
	rule_list_free(&a->patterns);
	htab_fini(&a->users, block_free_cb);
	free(a);
}

void acl_rules_ref(struct acl_rules *a)
{
	atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
}

void acl_rules_unref(struct acl_rules *a)
{
	if (a && atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1)
		rules_free(a);
}

/* A line being parsed: [s, e) with a cursor, strtok-like on ' '. */
struct cursor {
	const char *p, *e;
};

static bool next_word(struct cursor *c, const char **w, size_t *wl)
{
	while (c->p < c->e && *c->p == ' ')
		c->p++;
	if (c->p == c->e)
		return false;
	*w = c->p;
	while (c->p < c->e && *c->p != ' ')
		c->p++;
	*wl = (size_t)(c->p - *w);
	if (c->p < c->e)
		c->p++; /* strtok consumes the one delimiter */
	return true;
}

/* The rest of the line, blanks trimmed (misc__trimblanks). */
static bool rest_of_line(struct cursor *c, const char **w, size_t *wl)
{
	const char *s = c->p, *e = c->e;
	while (s < e && isspace((unsigned char)*s))
		s++;
	while (e > s && isspace((unsigned char)e[-1]))
		e--;
	c->p = c->e;
	*w = s;
	*wl = (size_t)(e - s);
	return s < e;
}

static bool word_is(const char *w, size_t wl, const char *lit)
{
	return wl == strlen(lit) && !memcmp(w, lit, wl);
}

struct parse {
	const char *name;
	size_t line;
	char *err;
	size_t errlen;
	struct acl_rules *a;
	struct acl_block *user; /* current block */
};

static int parse_fail(struct parse *ps, const char *fmt, ...)
{
	int n = ps->line ? snprintf(ps->err, ps->errlen, "%s:%zu: ", ps->name,
				    ps->line)
			 : snprintf(ps->err, ps->errlen, "%s: ", ps->name);
	if (n >= 0 && (size_t)n < ps->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static int parse_access(const char *w, size_t wl, uint8_t *access)
{
	if (word_is(w, wl, "read"))
		*access = ACL_READ;
	else if (word_is(w, wl, "write"))
		*access = ACL_WRITE;
	else if (word_is(w, wl, "readwrite"))
		*access = ACL_READ | ACL_WRITE;
	else if (word_is(w, wl, "deny"))
		*access = ACL_DENY;
	else
		return -1;
	return 0;
}

static int parse_rule(struct parse *ps, struct cursor *c, bool pattern)
{
	const char *acc, *f;
	size_t accl, fl;
	uint8_t access = ACL_READ | ACL_WRITE;
	if (!next_word(c, &acc, &accl))
		return parse_fail(ps, "empty topic");
	if (rest_of_line(c, &f, &fl)) {
		if (parse_access(acc, accl, &access))
			return parse_fail(ps, "invalid access type \"%.*s\" "
					      "(read, write, readwrite, deny)",
					  (int)accl, acc);
	} else { /* "topic FILTER": the one word is the filter */
		f = acc;
		fl = accl;
	}
	if (!filter_valid(f, fl))
		return parse_fail(ps, "invalid topic filter \"%.*s\"",
				  (int)(fl > 200 ? 200 : fl), f);
	struct rule_list *l = pattern ? &ps->a->patterns : &ps->user->rules;
	/* Anonymous topic rules stay literal, as in Mosquitto; user-block
	 * topic rules substitute %u/%c (kite). */
	bool literal = !pattern && ps->user == &ps->a->anon;
	if (rule_list_add(l, f, fl, access, literal))
		return parse_fail(ps, "out of memory");
	return 0;
}

static int parse_line(struct parse *ps, const char *s, size_t len)
{
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		len--;
	if (len == 0 || s[0] == '#')
		return 0;
	if (memchr(s, '\0', len))
		return parse_fail(ps, "NUL byte in line");
	if (len > ACL_LINE_MAX)
		return parse_fail(ps, "line longer than %d bytes", ACL_LINE_MAX);
	struct cursor c = {s, s + len};
	const char *w;
	size_t wl;
	if (!next_word(&c, &w, &wl))
		return 0;
	if (word_is(w, wl, "topic"))
		return parse_rule(ps, &c, false);
	if (word_is(w, wl, "pattern"))
		return parse_rule(ps, &c, true);
	if (word_is(w, wl, "user")) {
		if (!rest_of_line(&c, &w, &wl))
			return parse_fail(ps, "missing username");
		if (wl > ACL_STRING_MAX)
			return parse_fail(ps, "username too long");
		ps->user = block_get(ps->a, w, wl);
		return ps->user ? 0 : parse_fail(ps, "out of memory");
	}
	return parse_fail(ps, "invalid line (expected topic, pattern or user)");
}

static struct acl_rules *parse_text(const char *name, const char *text,
				    size_t len, char *err, size_t errlen)
{
	struct parse ps = {.name = name, .err = err, .errlen = errlen};
	ps.a = calloc(1, sizeof(*ps.a));
	if (!ps.a) {
		parse_fail(&ps, "out of memory");
		return NULL;
	}
	atomic_init(&ps.a->refs, 1);
	ps.user = &ps.a->anon;
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		ps.line++;
		if (parse_line(&ps, p, (size_t)(le - p))) {
			rules_free(ps.a);
			return NULL;
		}
		p = nl ? nl + 1 : end;
	}
	if (err && errlen)
		err[0] = '\0';
	return ps.a;
}

struct acl_rules *acl_load_string(const char *name, const char *text,
				  char *err, size_t errlen)
{
	return parse_text(name, text, strlen(text), err, errlen);
}

struct acl_rules *acl_load(const char *path, char *err, size_t errlen)
{
	size_t len;
	char *text = acl_read_file(path, ACL_FILE_MAX, &len, err, errlen);
	if (!text)
		return NULL;
	struct acl_rules *a = parse_text(path, text, len, err, errlen);
	free(text);
	return a;
}

/* ---------------------------------------------------------------- identity */

/* Why a rule is left out of an identity (see "Dangerous identities"). */
static bool rule_usable(uint8_t subst, const char *username,
			const char *client_id)
{
	if ((subst & SUBST_U) && (!username || strpbrk(username, "+#/")))
		return false;
	if ((subst & SUBST_C) && (!client_id || strpbrk(client_id, "+#/")))
		return false;
	return true;
}

/* Length of r's filter once substituted (Mosquitto's loop: "%c" always,
 * "%u" when there is a username), writing it to out when non-NULL. */
static size_t expand(const struct acl_rule *r, const char *username,
		     const char *client_id, char *out)
{
	size_t n = 0;
	size_t ul = username ? strlen(username) : 0;
	size_t cl = client_id ? strlen(client_id) : 0;
	for (size_t i = 0; i < r->len; i++) {
		const char *sub = NULL;
		size_t sl = 0;
		if (r->subst && r->filter[i] == '%' && i + 1 < r->len) {
			if (r->filter[i + 1] == 'c' && client_id)
				sub = client_id, sl = cl;
			else if (r->filter[i + 1] == 'u' && username)
				sub = username, sl = ul;
		}
		if (sub) {
			if (out)
				memcpy(out + n, sub, sl);
			n += sl;
			i++;
		} else {
			if (out)
				out[n] = r->filter[i];
			n++;
		}
	}
	return n;
}

/* The rule lists an identity draws from, and whether patterns apply. */
struct id_source {
	const struct rule_list *own; /* user block or anonymous block */
	const struct rule_list *patterns;
};

static void id_source(const struct acl_rules *a, const char *username,
		      const char *client_id, struct id_source *src)
{
	static const struct rule_list empty;
	if (username) {
		const struct acl_block *b =
			block_find(a, username, strlen(username));
		src->own = b ? &b->rules : &empty;
	} else {
		src->own = &a->anon.rules;
	}
	/* Mosquitto 2.0: '+' or '#' in either name, or no client id,
	 * disables every pattern. */
	bool patterns_on = client_id && !strpbrk(client_id, "+#") &&
			   !(username && strpbrk(username, "+#"));
	src->patterns = patterns_on ? &a->patterns : &empty;
}

/* Visit the rules of one phase: denies first (pass 0) then grants. */
typedef void (*rule_visit_cb)(void *ctx, const struct acl_rule *r, int phase);

static void id_visit(const struct id_source *src, const char *username,
		     const char *client_id, rule_visit_cb cb, void *ctx)
{
	const struct rule_list *lists[2] = {src->own, src->patterns};
	for (int ph = 0; ph < 2; ph++) {
		for (int pass = 0; pass < 2; pass++) {
			const struct rule_list *l = lists[ph];
			for (uint32_t i = 0; i < l->n; i++) {
				const struct acl_rule *r = &l->v[i];
				if ((r->access == ACL_DENY) != (pass == 0))
					continue;
				if (!rule_usable(r->subst, username, client_id))
					continue;
				cb(ctx, r, ph * 2 + pass);
			}
		}
	}
}

/* Length of the prefix of s holding neither reject[0] nor reject[1]. */
static size_t strcspn_n(const char *s, size_t len, const char *reject)
{
	size_t i = 0;
	while (i < len && s[i] != reject[0] && s[i] != reject[1])
		i++;
	return i;
}

struct id_build {
	const char *username, *client_id;
	size_t count[4];
	size_t bytes;
	struct acl_identity *id;
	char *out;
	struct id_rule *next;
};

static void id_size_cb(void *ctx, const struct acl_rule *r, int phase)
{
	struct id_build *b = ctx;
	b->count[phase]++;
	b->bytes += expand(r, b->username, b->client_id, NULL);
}

static void id_fill_cb(void *ctx, const struct acl_rule *r, int phase)
{
	struct id_build *b = ctx;
	size_t n = expand(r, b->username, b->client_id, b->out);
	struct id_rule *ir = b->next;
	ir->filter = b->out;
	ir->len = (uint32_t)n;
	ir->access = r->access;
	size_t pre = strcspn_n(b->out, n, "+#");
	ir->prefix = (uint32_t)pre;
	if (pre == n)
		ir->kind = RULE_LITERAL;
	else if (pre + 1 == n && b->out[pre] == '#')
		ir->kind = RULE_PREFIX_HASH;
	else
		ir->kind = RULE_GENERAL;
	b->next++;
	b->out += n;
	(void)phase;
}

/* The cache key: flags, username, and the client id only when used. */
#define KEY_ANON 1
#define KEY_NO_PATTERNS 2
#define KEY_BY_CLIENT 4
#define KEY_NO_CLIENT 8

static size_t id_key(const struct id_source *src, const struct acl_rules *a,
		     const char *username, const char *client_id, char *out)
{
	uint8_t flags = 0;
	if (!username)
		flags |= KEY_ANON;
	if (src->patterns != &a->patterns)
		flags |= KEY_NO_PATTERNS;
	if (!client_id)
		flags |= KEY_NO_CLIENT;
	/* %c in the user's own block only matters with a username (anonymous
	 * rules are literal). */
	if ((src->own->subst | src->patterns->subst) & SUBST_C)
		flags |= KEY_BY_CLIENT;
	size_t ul = username ? strlen(username) : 0;
	size_t cl = (flags & KEY_BY_CLIENT) && client_id ? strlen(client_id) : 0;
	if (out) {
		out[0] = (char)flags;
		memcpy(out + 1, username ? username : "", ul);
		out[1 + ul] = '\0';
		memcpy(out + 2 + ul, cl ? client_id : "", cl);
	}
	return 2 + ul + cl;
}

/* Compile the identity for (username, client_id) whose cache key is key. */
static struct acl_identity *id_build(const struct id_source *src,
				     const char *username,
				     const char *client_id, const char *key,
				     size_t keylen)
{
	struct id_build b = {.username = username, .client_id = client_id};
	id_visit(src, username, client_id, id_size_cb, &b);
	size_t nrules = b.count[0] + b.count[1] + b.count[2] + b.count[3];
	if (nrules > ACL_IDENTITY_RULES_MAX)
		return NULL;
	size_t size = sizeof(struct acl_identity) +
		      nrules * sizeof(struct id_rule) + keylen + b.bytes;
	struct acl_identity *id = calloc(1, size);
	if (!id)
		return NULL;
	atomic_init(&id->refs, 1);
	id->rules = (struct id_rule *)(void *)id->pool;
	char *k = (char *)(id->rules + nrules);
	memcpy(k, key, keylen);
	id->key = k;
	id->keylen = keylen;
	id->n_deny1 = (uint32_t)b.count[0];
	id->n_grant1 = (uint32_t)b.count[1];
	id->n_deny2 = (uint32_t)b.count[2];
	id->n_grant2 = (uint32_t)b.count[3];
	b.out = k + keylen;
	b.next = id->rules;
	id_visit(src, username, client_id, id_fill_cb, &b);
	assert(b.next == id->rules + nrules);
	assert(b.out == (char *)id + size);
	return id;
}

/* ------------------------------------------------------------------- cache */

struct acl_cache *acl_cache_new(struct acl_rules *rules)
{
	struct acl_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	if (pthread_mutex_init(&c->lock, NULL)) {
		free(c);
		return NULL;
	}
	atomic_init(&c->refs, 1);
	acl_rules_ref(rules);
	c->rules = rules;
	return c;
}

void acl_cache_unref(struct acl_cache *c)
{
	if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	htab_fini(&c->ids, NULL); /* every identity holds a reference */
	pthread_mutex_destroy(&c->lock);
	acl_rules_unref(c->rules);
	free(c);
}

static bool id_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct acl_identity *id =
		htab_entry(l, const struct acl_identity, link);
	return id->keylen == len && !memcmp(id->key, key, len);
}

/* Under c->lock: the cached identity for key, with a new reference. */
static struct acl_identity *cache_find(struct acl_cache *c, const char *key,
				       size_t keylen, uint64_t hash)
{
	struct acl_identity *id = htab_entry(
		htab_find(&c->ids, hash, key, keylen, id_eq_cb),
		struct acl_identity, link);
	if (id)
		atomic_fetch_add_explicit(&id->refs, 1, memory_order_relaxed);
	return id;
}

struct acl_identity *acl_cache_get(struct acl_cache *c, const char *username,
				   const char *client_id)
{
	assert(c);
	if ((username && strlen(username) > ACL_STRING_MAX) ||
	    (client_id && strlen(client_id) > ACL_STRING_MAX))
		return NULL;
	struct id_source src;
	id_source(c->rules, username, client_id, &src);
	size_t keylen = id_key(&src, c->rules, username, client_id, NULL);
	char *key = malloc(keylen);
	if (!key)
		return NULL;
	id_key(&src, c->rules, username, client_id, key);
	uint64_t hash = hash_bytes(key, keylen);

	pthread_mutex_lock(&c->lock);
	struct acl_identity *id = cache_find(c, key, keylen, hash);
	pthread_mutex_unlock(&c->lock);
	if (id) {
		free(key);
		return id;
	}
	/* Compiled outside the lock (a big user block takes a while); the
	 * rules are immutable, so a racing builder makes the same thing. */
	struct acl_identity *fresh =
		id_build(&src, username, client_id, key, keylen);
	free(key);
	if (!fresh)
		return NULL;
	pthread_mutex_lock(&c->lock);
	id = cache_find(c, fresh->key, fresh->keylen, hash);
	if (!id && htab_insert(&c->ids, &fresh->link, hash) == 0) {
		id = fresh;
		fresh = NULL;
		id->cache = c;
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&c->lock);
	free(fresh);
	return id;
}

void acl_identity_ref(struct acl_identity *id)
{
	unsigned old = atomic_fetch_add_explicit(&id->refs, 1,
						 memory_order_relaxed);
	assert(old > 0);
	(void)old;
}

/* The 1 -> 0 transition happens under the cache lock, where acl_cache_get
 * takes its references, so an identity is never revived after unlinking. */
void acl_identity_unref(struct acl_identity *id)
{
	if (!id)
		return;
	unsigned n = atomic_load_explicit(&id->refs, memory_order_relaxed);
	while (n > 1) {
		if (atomic_compare_exchange_weak_explicit(
			    &id->refs, &n, n - 1, memory_order_acq_rel,
			    memory_order_relaxed))
			return;
	}
	struct acl_cache *c = id->cache;
	pthread_mutex_lock(&c->lock);
	if (atomic_fetch_sub_explicit(&id->refs, 1, memory_order_acq_rel) != 1) {
		pthread_mutex_unlock(&c->lock);
		return;
	}
	htab_remove(&c->ids, &id->link);
	pthread_mutex_unlock(&c->lock);
	free(id);
	acl_cache_unref(c);
}
