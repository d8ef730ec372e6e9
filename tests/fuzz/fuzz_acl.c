/* libFuzzer target for acl/: the ACL and password file parsers, identity
 * compilation and the matchers.
 *
 * Input: byte 0 holds flags (bit 0: anonymous); the rest splits on NUL
 * bytes into ACL text, username, client id, topic and filter. Checked:
 *  - no crash or leak on any text; failures carry "NAME:LINE: reason";
 *  - SUBSCRIBE is always allowed; checks are deterministic across caches;
 *  - acl_check and acl_filter_may_match agree: when the identity may read
 *    a topic that the filter matches, the filter may match (the topic is
 *    the witness). "filter matches topic" comes from a second ACL file
 *    "topic read FILTER", so the two matchers are compared as well;
 *  - a readable valid topic, used as a filter, may match. */
#include "acl/acl.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(c)                                                        \
	do {                                                                  \
		if (!(c)) {                                                   \
			fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n",     \
				__FILE__, __LINE__, #c);                      \
			abort();                                              \
		}                                                             \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool topic_ok(const char *t)
{
	return t[0] && !strpbrk(t, "+#") && strncmp(t, "$share/", 7);
}

static struct acl_identity *get(struct acl_rules *a, const char *user,
				const char *cid)
{
	struct acl_cache *c = acl_cache_new(a);
	FUZZ_CHECK(c);
	struct acl_identity *id = acl_cache_get(c, user, cid);
	acl_cache_unref(c);
	return id;
}

static void check_filter(const struct acl_identity *id, const char *topic,
			 const char *filter)
{
	size_t fl = strlen(filter);
	/* The ACL parser trims blanks: compare the same filter only. */
	if (!fl || strchr(filter, '\n') || !strncmp(filter, "$share/", 7) ||
	    isspace((unsigned char)filter[0]) ||
	    isspace((unsigned char)filter[fl - 1]))
		return;
	char *text = malloc(strlen(filter) + 16);
	sprintf(text, "topic read %s\n", filter);
	char err[256];
	struct acl_rules *fa = acl_load_string("f", text, err, sizeof(err));
	free(text);
	if (!fa)
		return; /* invalid filter */
	struct acl_identity *fid = get(fa, NULL, "c");
	acl_rules_unref(fa);
	if (!fid)
		return;
	bool matches = acl_check(fid, topic, strlen(topic), ACL_READ);
	if (matches && acl_check(id, topic, strlen(topic), ACL_READ))
		FUZZ_CHECK(acl_filter_may_match(id, filter, fl));
	/* A read grant on a filter may match that very filter. */
	FUZZ_CHECK(acl_filter_may_match(fid, filter, fl));
	acl_identity_unref(fid);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 8192)
		return 0;
	char *buf = malloc(size + 5);
	memcpy(buf, data + 1, size - 1);
	memset(buf + size - 1, 0, 6);
	const char *part[5];
	const char *p = buf, *end = buf + size - 1;
	for (int i = 0; i < 5; i++) {
		part[i] = p <= end ? p : "";
		p += strlen(p) + 1;
	}
	const char *text = part[0];
	const char *user = (data[0] & 1) ? NULL : part[1];
	const char *cid = part[2], *topic = part[3], *filter = part[4];

	char err[256];
	struct passwd_db *pw = passwd_load_string("pw", text, err, sizeof(err));
	FUZZ_CHECK(pw || strncmp(err, "pw:", 3) == 0);
	passwd_free(pw);

	struct acl_rules *a = acl_load_string("acl", text, err, sizeof(err));
	if (!a) {
		FUZZ_CHECK(strncmp(err, "acl:", 4) == 0);
		free(buf);
		return 0;
	}
	struct acl_identity *id = get(a, user, cid);
	struct acl_identity *id2 = get(a, user, cid);
	acl_rules_unref(a);
	if (!id || !id2) {
		acl_identity_unref(id);
		acl_identity_unref(id2);
		free(buf);
		return 0;
	}
	size_t tl = strlen(topic);
	for (int acc = 1; acc <= 4; acc <<= 1) {
		bool r = acl_check(id, topic, tl, (enum acl_access)acc);
		FUZZ_CHECK(r == acl_check(id2, topic, tl, (enum acl_access)acc));
		if (acc == ACL_SUBSCRIBE)
			FUZZ_CHECK(r);
	}
	if (topic_ok(topic) && acl_check(id, topic, tl, ACL_READ))
		FUZZ_CHECK(acl_filter_may_match(id, topic, tl));
	if (topic_ok(topic))
		check_filter(id, topic, filter);
	(void)acl_filter_may_match(id, filter, strlen(filter));
	acl_identity_unref(id);
	acl_identity_unref(id2);
	free(buf);
	return 0;
}
