/* Helpers shared by the unit tests of the three level trees (test_trie.c,
 * test_gtrie.c, test_retain.c): the small-alphabet model generator, topics
 * that exercise word alignment, deep filters, a PRNG and a clock. */
#ifndef KITE_TEST_TOPIC_MODEL_H
#define KITE_TEST_TOPIC_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "l/l/.../l" with n levels; the last one replaced by `last` if given. */
static inline char *deep_filter(size_t n, const char *last)
{
	char *s = malloc(2 * n + 2);
	size_t pos = 0;

	for (size_t i = 0; i < n; i++) {
		if (i)
			s[pos++] = '/';
		s[pos++] = (i == n - 1 && last) ? last[0] : 'l';
	}
	s[pos] = 0;
	return s;
}

/* "p..p/x..x/y..y" with c, a and b letters: levels of every length from 0
 * to past two words, at every alignment within a word. */
static inline void aligned_topic(char *buf, int c, int a, int b)
{
	int pos = 0;

	for (int i = 0; i < c; i++)
		buf[pos++] = 'p';
	buf[pos++] = '/';
	for (int i = 0; i < a; i++)
		buf[pos++] = 'x';
	buf[pos++] = '/';
	for (int i = 0; i < b; i++)
		buf[pos++] = 'y';
	buf[pos] = 0;
}

/* Every valid filter of up to three levels over a small alphabet, and
 * every topic of up to three levels: covers wildcards at each position,
 * empty levels and '$'. */
struct gen {
	char filters[256][16];
	int nf;
	char topics[128][16];
	int nt;
};

static inline void gen_all(struct gen *g)
{
	static const char *fl[] = {"a", "b", "", "+", "#", "$x"};
	static const char *tl[] = {"a", "b", "", "$x"};

	g->nf = g->nt = 0;
	for (int depth = 1; depth <= 3; depth++) {
		int nfc = 1, ntc = 1;
		for (int d = 0; d < depth; d++) {
			nfc *= 6;
			ntc *= 4;
		}
		for (int c = 0; c < nfc; c++) {
			char buf[16] = "";
			int x = c, ok = 1;
			for (int d = 0; d < depth; d++, x /= 6) {
				if (x % 6 == 4 && d != depth - 1)
					ok = 0; /* '#' only last */
				if (d)
					strcat(buf, "/");
				strcat(buf, fl[x % 6]);
			}
			if (ok && buf[0]) /* "" is not a filter */
				strcpy(g->filters[g->nf++], buf);
		}
		for (int c = 0; c < ntc; c++) {
			char buf[16] = "";
			int x = c;
			for (int d = 0; d < depth; d++, x /= 4) {
				if (d)
					strcat(buf, "/");
				strcat(buf, tl[x % 4]);
			}
			if (buf[0])
				strcpy(g->topics[g->nt++], buf);
		}
	}
}

/* xorshift64: reproducible churn from a fixed seed. */
static inline uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Churn runs for a fixed time, not a fixed count, so sanitizer builds
 * still race for long enough. */
static inline long elapsed_ms(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

#endif
