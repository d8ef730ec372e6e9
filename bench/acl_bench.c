/* ACL hot-path cost vs. number of users in the file.
 *
 * For N = 10, 10,000 and 100,000 device users (`user device-K` +
 * `topic readwrite devices/%u/#` each, plus a few patterns), measures:
 * load time, acl_cache_get (miss and hit), and ns per acl_check for the
 * publish write check and the delivery read check (granted and denied).
 * Build and run: see bench/ACL.md. */
#include "acl/acl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECKS 20000000

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static char *acl_text(size_t users)
{
	size_t cap = users * 64 + 512, n = 0;
	char *t = malloc(cap);
	n += (size_t)snprintf(t + n, cap - n,
			      "topic read public/#\n"
			      "pattern readwrite +/gateway/%%u/#\n"
			      "pattern readwrite application/%%u/#\n"
			      "pattern write clients/%%c/status\n"
			      "pattern deny devices/%%u/admin/#\n");
	for (size_t i = 0; i < users; i++)
		n += (size_t)snprintf(t + n, cap - n,
				      "user device-%zu\n"
				      "topic readwrite devices/%%u/#\n",
				      i);
	return t;
}

/* ns per call over CHECKS calls cycling through a few topics. */
static double time_checks(const struct acl_identity *id, const char **topics,
			  size_t ntopics, enum acl_access access, size_t *yes)
{
	size_t lens[8];
	for (size_t i = 0; i < ntopics; i++)
		lens[i] = strlen(topics[i]);
	volatile size_t sink = 0;
	double t0 = now_ns();
	for (size_t i = 0; i < CHECKS; i++) {
		size_t k = i % ntopics;
		sink += acl_check(id, topics[k], lens[k], access);
	}
	double t1 = now_ns();
	*yes = sink;
	return (t1 - t0) / CHECKS;
}

static void run(size_t users)
{
	char *text = acl_text(users);
	char err[256];
	double t0 = now_ns();
	struct acl_rules *a = acl_load_string("bench", text, err, sizeof(err));
	double t_load = now_ns() - t0;
	free(text);
	if (!a) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	struct acl_cache *c = acl_cache_new(a);
	char user[32], t_own[64], t_deep[96], t_other[64];
	size_t k = users / 2;
	snprintf(user, sizeof(user), "device-%zu", k);
	snprintf(t_own, sizeof(t_own), "devices/device-%zu/telemetry", k);
	snprintf(t_deep, sizeof(t_deep),
		 "devices/device-%zu/sensors/temperature/room-12/value", k);
	snprintf(t_other, sizeof(t_other), "devices/device-%zu/telemetry",
		 k + 1);
	t0 = now_ns();
	struct acl_identity *id = acl_cache_get(c, user, "client-1");
	double t_miss = now_ns() - t0;
	t0 = now_ns();
	struct acl_identity *id2 = acl_cache_get(c, user, "client-2");
	double t_hit = now_ns() - t0;

	const char *w[] = {t_own, t_deep};
	const char *r_ok[] = {t_own, "public/news/today"};
	const char *r_no[] = {t_other, "application/other/x"};
	size_t y1, y2, y3;
	double ns_w = time_checks(id, w, 2, ACL_WRITE, &y1);
	double ns_r = time_checks(id, r_ok, 2, ACL_READ, &y2);
	double ns_n = time_checks(id, r_no, 2, ACL_READ, &y3);
	if (y1 != CHECKS || y2 != CHECKS / 2 || y3 != 0) {
		/* public/news is anonymous-only: half the reads are denied */
		fprintf(stderr, "unexpected results %zu %zu %zu\n", y1, y2, y3);
	}
	printf("| %7zu | %8.1f | %6.1f | %6.2f | %5zu | %6.1f | %6.1f | %6.1f |\n",
	       users, t_load / 1e6, t_miss / 1e3, t_hit / 1e3,
	       acl_identity_rule_count(id), ns_w, ns_r, ns_n);
	acl_identity_unref(id);
	acl_identity_unref(id2);
	acl_cache_unref(c);
	acl_rules_unref(a);
}

int main(void)
{
	printf("| users   | load ms  | get µs (miss) | get µs (hit) | rules | "
	       "write ns | read ns (granted/denied mix) | read ns (denied) |\n");
	printf("|---|---|---|---|---|---|---|---|\n");
	run(10); /* warm-up: CPU frequency, page faults */
	printf("|---|---|---|---|---|---|---|---|\n");
	size_t sizes[] = {10, 10000, 100000};
	for (size_t i = 0; i < 3; i++)
		run(sizes[i]);
	return 0;
}
