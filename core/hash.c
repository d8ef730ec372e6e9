/* SipHash (Aumasson and Bernstein, 2012) under a per-process key (see
 * hash.h). */
#include "core/hash.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Written once before main(), read-only afterwards: no synchronisation. */
static uint64_t hash_k0, hash_k1;

static inline uint64_t load_le64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

static inline uint64_t rotl(uint64_t x, unsigned b)
{
	return (x << b) | (x >> (64 - b));
}

struct sip {
	uint64_t v0, v1, v2, v3;
};

static inline void sip_rounds(struct sip *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		s->v0 += s->v1;
		s->v1 = rotl(s->v1, 13) ^ s->v0;
		s->v0 = rotl(s->v0, 32);
		s->v2 += s->v3;
		s->v3 = rotl(s->v3, 16) ^ s->v2;
		s->v0 += s->v3;
		s->v3 = rotl(s->v3, 21) ^ s->v0;
		s->v2 += s->v1;
		s->v1 = rotl(s->v1, 17) ^ s->v2;
		s->v2 = rotl(s->v2, 32);
	}
}

/* Inlined into each caller, so hash_bytes gets its rounds unrolled. */
static inline __attribute__((always_inline)) uint64_t
siphash(uint64_t k0, uint64_t k1, unsigned c, unsigned d, const uint8_t *p,
	size_t len)
{
	struct sip s = {
		k0 ^ 0x736f6d6570736575ull,
		k1 ^ 0x646f72616e646f6dull,
		k0 ^ 0x6c7967656e657261ull,
		k1 ^ 0x7465646279746573ull,
	};
	size_t body = len & ~(size_t)7; /* indices, not p + n: p may be NULL */
	uint64_t m;

	for (size_t i = 0; i < body; i += 8) {
		m = load_le64(p + i);
		s.v3 ^= m;
		sip_rounds(&s, c);
		s.v0 ^= m;
	}
	m = (uint64_t)len << 56;
	for (size_t i = 0; i < (len & 7); i++)
		m |= (uint64_t)p[body + i] << (8 * i);
	s.v3 ^= m;
	sip_rounds(&s, c);
	s.v0 ^= m;
	s.v2 ^= 0xff;
	sip_rounds(&s, d);
	return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

uint64_t hash_bytes(const void *p, size_t len)
{
	assert(p || len == 0);
	return siphash(hash_k0, hash_k1, 1, 3, p, len);
}

uint64_t hash_siphash(const uint8_t key[HASH_KEY_LEN], unsigned c_rounds,
		      unsigned d_rounds, const void *p, size_t len)
{
	assert(key && (p || len == 0));
	return siphash(load_le64(key), load_le64(key + 8), c_rounds, d_rounds,
		       p, len);
}

__attribute__((constructor)) static void hash_key_init(void)
{
	uint8_t key[HASH_KEY_LEN];
	ssize_t n;

	do
		n = getrandom(key, sizeof(key), 0);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(key)) {
		fprintf(stderr, "kite: no random hash key (getrandom: %s); "
				"refusing to run with a predictable one\n",
			n < 0 ? strerror(errno) : "short read");
		abort();
	}
	hash_k0 = load_le64(key);
	hash_k1 = load_le64(key + 8);
	memset(key, 0, sizeof(key));
}
