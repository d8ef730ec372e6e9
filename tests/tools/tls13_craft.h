/* Crafting TLS 1.3 records a real client's stack would never send
 * (bad inner content types, all-zero padding, oversize plaintext), for the
 * TLS unit tests and the TLS fuzzer: the client's application traffic
 * secret comes from its keylog, and records are sealed with
 * TLS_AES_128_GCM_SHA256 under the keys RFC 8446 7.3 derives from it.
 * Header-only so that both test binaries take it without a build rule. */
#ifndef KITE_TESTS_TLS13_CRAFT_H
#define KITE_TESTS_TLS13_CRAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

struct tls13_craft_secret {
	uint8_t b[48];
	size_t len;
};

/* From one keylog line (SSL_CTX_set_keylog_callback), the client's first
 * application traffic secret; other lines leave *s as it was. */
static inline void tls13_craft_keylog(const char *line,
				      struct tls13_craft_secret *s)
{
	static const char tag[] = "CLIENT_TRAFFIC_SECRET_0 ";
	if (strncmp(line, tag, sizeof(tag) - 1))
		return;
	/* "tag client_random secret": the secret is the last field. */
	const char *hex = strrchr(line, ' ');
	s->len = 0;
	unsigned v;
	while (hex && hex[1] && hex[2] && s->len < sizeof(s->b) &&
	       sscanf(hex + 1, "%2x", &v) == 1) {
		s->b[s->len++] = (uint8_t)v;
		hex += 2;
	}
}

/* HKDF-Expand-Label(secret, label, "", len) with SHA-256 (RFC 8446 7.1). */
static inline bool tls13_craft_expand(const struct tls13_craft_secret *s,
				      const char *label, uint8_t *out,
				      size_t len)
{
	uint8_t info[64];
	size_t n = 0, l = strlen(label);
	if (l > sizeof(info) - 10)
		return false;
	info[n++] = 0;
	info[n++] = (uint8_t)len;
	info[n++] = (uint8_t)(6 + l);
	memcpy(info + n, "tls13 ", 6);
	memcpy(info + n + 6, label, l);
	n += 6 + l;
	info[n++] = 0;
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						 (char *)"SHA256", 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
						  (void *)s->b, s->len),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
		OSSL_PARAM_construct_end(),
	};
	bool ok = kc && EVP_KDF_derive(kc, out, len, params) == 1;
	EVP_KDF_CTX_free(kc);
	EVP_KDF_free(kdf);
	return ok;
}

/* The record key and IV of a TLS_AES_128_GCM_SHA256 traffic secret. */
struct tls13_craft_keys {
	uint8_t key[16], iv[12];
	uint64_t seq; /* the next record's sequence number */
};

static inline bool tls13_craft_keys(const struct tls13_craft_secret *s,
				    struct tls13_craft_keys *k)
{
	k->seq = 0;
	return s->len == 32 && tls13_craft_expand(s, "key", k->key, 16) &&
	       tls13_craft_expand(s, "iv", k->iv, 12);
}

/* inner (TLSInnerPlaintext as it is: content, type, padding) sealed as
 * the next record into out (5 + n + 16 bytes); its length, or 0. */
static inline size_t tls13_craft_seal(struct tls13_craft_keys *k,
				      const uint8_t *inner, size_t n,
				      uint8_t *out)
{
	uint8_t nonce[12];
	int len;
	if (n + 16 > 0xffff)
		return 0;
	memcpy(nonce, k->iv, 12);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] ^= (uint8_t)(k->seq >> (56 - 8 * i));
	out[0] = 23; /* application_data, as every TLS 1.3 record says */
	out[1] = out[2] = 3;
	out[3] = (uint8_t)((n + 16) >> 8);
	out[4] = (uint8_t)(n + 16);
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	bool ok = x &&
		  EVP_EncryptInit_ex(x, EVP_aes_128_gcm(), NULL, k->key,
				     nonce) == 1 &&
		  EVP_EncryptUpdate(x, NULL, &len, out, 5) == 1 &&
		  (!n || EVP_EncryptUpdate(x, out + 5, &len, inner, (int)n) == 1) &&
		  EVP_EncryptFinal_ex(x, out + 5 + n, &len) == 1 &&
		  EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16,
				      out + 5 + n) == 1;
	EVP_CIPHER_CTX_free(x);
	if (!ok)
		return 0;
	k->seq++;
	return 5 + n + 16;
}

#endif
