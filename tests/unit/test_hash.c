/* core/hash: SipHash against the reference vectors and against OpenSSL's
 * EVP_MAC "SIPHASH" (the oracle) over random keys, lengths and rounds. */
#include "core/hash.h"
#include "runner.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* The reference implementation's vectors_sip64: SipHash-2-4, key 00..0f,
 * message 00..n-1 for n = 0..63. */
static const uint64_t sip24_vectors[64] = {
	0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a,
	0x85676696d7fb7e2d, 0xcf2794e0277187b7, 0x18765564cd99a68d,
	0xcbc9466e58fee3ce, 0xab0200f58b01d137, 0x93f5f5799a932462,
	0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
	0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee,
	0xa129ca6149be45e5, 0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794,
	0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd, 0xbed65cf21aa2ee98,
	0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
	0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3,
	0x2f2e6163076bcfad, 0xde4daaaca71dc9a5, 0xa6a2506687956571,
	0xad87a3535c49ef28, 0x32d892fad841c342, 0x7127512f72f27cce,
	0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
	0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d,
	0x9abfd8766a33735c, 0x0e3ea96b5304a7d0, 0xad0c42d6fc585992,
	0x187306c89bc215a9, 0xd4a60abcf3792b95, 0xf935451de4f21df2,
	0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
	0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72,
	0xa192d576b245165a, 0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f,
	0x7fa8220ba3b2ecea, 0x245731c13ca42499, 0xb78dbfaf3a8d83bd,
	0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
	0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57,
	0x958a324ceb064572,
};

TEST(siphash_2_4_matches_the_reference_vectors)
{
	uint8_t key[HASH_KEY_LEN], msg[64];

	for (unsigned i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)i;
	for (unsigned i = 0; i < sizeof(msg); i++)
		msg[i] = (uint8_t)i;
	for (unsigned n = 0; n < 64; n++)
		CHECK(hash_siphash(key, 2, 4, msg, n) == sip24_vectors[n]);
	CHECK(hash_siphash(key, 2, 4, NULL, 0) == sip24_vectors[0]);
}

/* OpenSSL's SipHash-c-d of msg, 64-bit output (little-endian bytes). */
static uint64_t openssl_siphash(EVP_MAC_CTX *ctx, const uint8_t *key,
				unsigned c, unsigned d, const uint8_t *msg,
				size_t len)
{
	unsigned size = 8;
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_uint(OSSL_MAC_PARAM_SIZE, &size),
		OSSL_PARAM_construct_uint(OSSL_MAC_PARAM_C_ROUNDS, &c),
		OSSL_PARAM_construct_uint(OSSL_MAC_PARAM_D_ROUNDS, &d),
		OSSL_PARAM_construct_end(),
	};
	uint8_t out[8];
	size_t outl = 0;
	uint64_t v = 0;

	if (EVP_MAC_init(ctx, key, HASH_KEY_LEN, params) != 1 ||
	    EVP_MAC_update(ctx, msg, len) != 1 ||
	    EVP_MAC_final(ctx, out, &outl, sizeof(out)) != 1 || outl != 8)
		return 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | out[i];
	return v;
}

/* Every length up to three blocks past 64 and every misalignment of the
 * input, for 1-3 (what kite uses) and 2-4. */
TEST(siphash_matches_openssl_evp_mac_over_random_keys_and_lengths)
{
	static const unsigned rounds[][2] = {{1, 3}, {2, 4}};
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
	EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
	uint8_t key[HASH_KEY_LEN], buf[96 + 8];
	int mismatches = 0;

	CHECK(ctx);
	if (!ctx) {
		EVP_MAC_free(mac);
		return;
	}
	for (unsigned r = 0; r < 2; r++) {
		for (unsigned k = 0; k < 64; k++) {
			CHECK(RAND_bytes(key, sizeof(key)) == 1);
			CHECK(RAND_bytes(buf, sizeof(buf)) == 1);
			for (size_t len = 0; len <= 96; len++) {
				const uint8_t *msg = buf + (len + k) % 8;
				uint64_t want = openssl_siphash(
					ctx, key, rounds[r][0], rounds[r][1],
					msg, len);

				mismatches += hash_siphash(key, rounds[r][0],
							   rounds[r][1], msg,
							   len) != want;
			}
		}
	}
	CHECK_EQ(mismatches, 0);
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
}

TEST(hash_bytes_uses_a_random_process_key)
{
	static const uint8_t zero[HASH_KEY_LEN];
	const char *id = "Device123";

	CHECK(hash_bytes(id, 9) == hash_bytes("Device123", 9));
	CHECK(hash_bytes(id, 9) != hash_bytes(id, 8));
	CHECK(hash_bytes(NULL, 0) == hash_bytes("", 0));
	/* Chance of a false failure: 2^-64 per line. */
	CHECK(hash_bytes("", 0) != hash_siphash(zero, 1, 3, "", 0));
	CHECK(hash_bytes(id, 9) != hash_siphash(zero, 1, 3, id, 9));
}
