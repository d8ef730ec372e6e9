/* TLS AEAD records without an SSL object: see rec.h. Nonces and
 * additional data as RFC 8446 5.2-5.3 (TLS 1.3), RFC 5288 3 (TLS 1.2
 * AES-GCM: 4-byte implicit salt, 8-byte explicit nonce, which kite sets
 * to the sequence number as OpenSSL does) and RFC 7905 2 (TLS 1.2
 * ChaCha20-Poly1305: IV xor sequence number, no explicit nonce). */
#include "tls/rec.h"

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define TAG_LEN 16
#define EXPLICIT_NONCE_LEN 8

struct rec_dir {
	EVP_CIPHER_CTX *ctx;
	uint8_t iv[12]; /* static IV; TLS 1.2 GCM: salt in the first 4 */
	uint64_t seq;
};

struct tls_rec {
	struct rec_dir tx, rx;
	uint16_t version; /* TLS_1_2_VERSION or TLS_1_3_VERSION */
	uint16_t cipher;  /* TLS_CIPHER_* */
	struct tls_ktls_rekey *rekey;
};

/* Fetched once: an OpenSSL 3 fetch is a locked name lookup. */
static EVP_CIPHER *aes128gcm, *aes256gcm, *chacha;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void ciphers_fetch(void)
{
	aes128gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
	aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* One direction's key from the kernel struct; enc: 1 seal, 0 open. */
static int dir_set(struct rec_dir *d, uint16_t version, uint16_t cipher,
		   const union tls_ktls_crypto_info *ci, int enc)
{
	const EVP_CIPHER *evp;
	const uint8_t *key;
	switch (cipher) {
	case TLS_CIPHER_AES_GCM_128:
		evp = aes128gcm;
		key = ci->aes_gcm_128.key;
		memcpy(d->iv, ci->aes_gcm_128.salt, 4);
		memcpy(d->iv + 4, ci->aes_gcm_128.iv, 8);
		d->seq = get_be64(ci->aes_gcm_128.rec_seq);
		break;
	case TLS_CIPHER_AES_GCM_256:
		evp = aes256gcm;
		key = ci->aes_gcm_256.key;
		memcpy(d->iv, ci->aes_gcm_256.salt, 4);
		memcpy(d->iv + 4, ci->aes_gcm_256.iv, 8);
		d->seq = get_be64(ci->aes_gcm_256.rec_seq);
		break;
	case TLS_CIPHER_CHACHA20_POLY1305:
		evp = chacha;
		key = ci->chacha20_poly1305.key;
		memcpy(d->iv, ci->chacha20_poly1305.iv, 12);
		d->seq = get_be64(ci->chacha20_poly1305.rec_seq);
		break;
	default:
		return -1;
	}
	(void)version;
	if (!evp || (!d->ctx && !(d->ctx = EVP_CIPHER_CTX_new())))
		return -1;
	return EVP_CipherInit_ex(d->ctx, evp, NULL, key, NULL, enc) == 1 ? 0 : -1;
}

struct tls_rec *tls_rec_new(struct tls_ktls_keys *k)
{
	pthread_once(&fetch_once, ciphers_fetch);
	struct tls_rec *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->version = k->version;
	r->cipher = k->cipher_type;
	if (dir_set(&r->tx, k->version, k->cipher_type, &k->tx, 1) ||
	    dir_set(&r->rx, k->version, k->cipher_type, &k->rx, 0)) {
		tls_rec_free(r);
		return NULL;
	}
	r->rekey = k->rekey;
	k->rekey = NULL;
	return r;
}

void tls_rec_free(struct tls_rec *r)
{
	if (!r)
		return;
	EVP_CIPHER_CTX_free(r->tx.ctx);
	EVP_CIPHER_CTX_free(r->rx.ctx);
	tls_ktls_rekey_free(r->rekey);
	OPENSSL_cleanse(r, sizeof(*r));
	free(r);
}

int tls_rec_is_tls13(const struct tls_rec *r)
{
	return r->version == TLS_1_3_VERSION;
}

/* The record's nonce; TLS 1.2 GCM also gives its explicit part. */
static void nonce_make(const struct tls_rec *r, const struct rec_dir *d,
		       uint8_t nonce[12])
{
	memcpy(nonce, d->iv, 12);
	if (r->version == TLS_1_2_VERSION && r->cipher != TLS_CIPHER_CHACHA20_POLY1305) {
		put_be64(nonce + 4, d->seq);
		return;
	}
	uint8_t s[8];
	put_be64(s, d->seq);
	for (int i = 0; i < 8; i++)
		nonce[4 + i] ^= s[i];
}

static bool explicit_nonce(const struct tls_rec *r)
{
	return r->version == TLS_1_2_VERSION && r->cipher != TLS_CIPHER_CHACHA20_POLY1305;
}

size_t tls_rec_seal(struct tls_rec *r, uint8_t type, const uint8_t *p,
		    size_t n, uint8_t *out)
{
	struct iovec iov = {(void *)p, n};
	return tls_rec_sealv(r, type, &iov, n ? 1 : 0, n, out);
}

size_t tls_rec_sealv(struct tls_rec *r, uint8_t type, const struct iovec *iov,
		     unsigned niov, size_t n, uint8_t *out)
{
	assert(r && n <= TLS_REC_PLAIN_MAX && (iov || !niov));
	/* A wrapped sequence number would reuse a nonce. */
	if (r->tx.seq == UINT64_MAX)
		return 0;
	bool v13 = r->version == TLS_1_3_VERSION;
	size_t expl = explicit_nonce(r) ? EXPLICIT_NONCE_LEN : 0;
	size_t body = expl + n + (v13 ? 1 : 0) + TAG_LEN;
	uint8_t nonce[12], aad[13];
	size_t aad_len, done = 0;
	int outl;

	out[0] = v13 ? TLS_REC_DATA : type;
	out[1] = 3;
	out[2] = 3;
	out[3] = (uint8_t)(body >> 8);
	out[4] = (uint8_t)body;
	nonce_make(r, &r->tx, nonce);
	if (v13) {
		memcpy(aad, out, TLS_REC_HEADER);
		aad_len = TLS_REC_HEADER;
	} else {
		put_be64(aad, r->tx.seq);
		aad[8] = type;
		aad[9] = 3;
		aad[10] = 3;
		aad[11] = (uint8_t)(n >> 8);
		aad[12] = (uint8_t)n;
		aad_len = 13;
		if (expl)
			memcpy(out + TLS_REC_HEADER, nonce + 4, EXPLICIT_NONCE_LEN);
	}
	uint8_t *c = out + TLS_REC_HEADER + expl;
	EVP_CIPHER_CTX *x = r->tx.ctx;
	if (EVP_EncryptInit_ex(x, NULL, NULL, NULL, nonce) != 1 ||
	    EVP_EncryptUpdate(x, NULL, &outl, aad, (int)aad_len) != 1)
		return 0;
	/* Straight from the caller's pieces: AEAD streams. */
	for (unsigned i = 0; i < niov; i++) {
		if (!iov[i].iov_len)
			continue;
		if (done + iov[i].iov_len > n ||
		    EVP_EncryptUpdate(x, c + done, &outl, iov[i].iov_base,
				      (int)iov[i].iov_len) != 1 ||
		    (size_t)outl != iov[i].iov_len)
			return 0;
		done += iov[i].iov_len;
	}
	if (done != n ||
	    (v13 && EVP_EncryptUpdate(x, c + n, &outl, &type, 1) != 1) ||
	    EVP_EncryptFinal_ex(x, c + n + (v13 ? 1 : 0), &outl) != 1 ||
	    EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, TAG_LEN,
				c + n + (v13 ? 1 : 0)) != 1)
		return 0;
	r->tx.seq++;
	return TLS_REC_HEADER + body;
}

int tls_rec_open(struct tls_rec *r, const uint8_t *rec, size_t len,
		 uint8_t *out, uint8_t *type)
{
	assert(r && rec && len >= TLS_REC_HEADER);
	bool v13 = r->version == TLS_1_3_VERSION;
	size_t expl = explicit_nonce(r) ? EXPLICIT_NONCE_LEN : 0;
	size_t body = len - TLS_REC_HEADER;
	uint8_t nonce[12], aad[13], tag[TAG_LEN];
	size_t aad_len;
	int outl;

	assert(((size_t)rec[3] << 8 | rec[4]) == body);
	if (v13 && rec[0] != TLS_REC_DATA)
		return -TLS_REC_AD_UNEXPECTED_MESSAGE;
	if (body < expl + TAG_LEN + (v13 ? 1 : 0))
		return -TLS_REC_AD_BAD_RECORD_MAC; /* cannot authenticate */
	/* Too long to be a record of ours to open: refused before any
	 * decryption work (RFC 8446 5.2, 5.4; RFC 5246 6.2.3). */
	if (body - expl - TAG_LEN > TLS_REC_PLAIN_MAX + (v13 ? 1 : 0))
		return -TLS_REC_AD_RECORD_OVERFLOW;
	if (r->rx.seq == UINT64_MAX)
		return -TLS_REC_AD_INTERNAL_ERROR;
	size_t n = body - expl - TAG_LEN;
	nonce_make(r, &r->rx, nonce);
	if (expl)
		memcpy(nonce + 4, rec + TLS_REC_HEADER, EXPLICIT_NONCE_LEN);
	if (v13) {
		memcpy(aad, rec, TLS_REC_HEADER);
		aad_len = TLS_REC_HEADER;
	} else {
		put_be64(aad, r->rx.seq);
		aad[8] = rec[0];
		aad[9] = rec[1];
		aad[10] = rec[2];
		aad[11] = (uint8_t)(n >> 8);
		aad[12] = (uint8_t)n;
		aad_len = 13;
	}
	const uint8_t *c = rec + TLS_REC_HEADER + expl;
	memcpy(tag, c + n, TAG_LEN);
	EVP_CIPHER_CTX *x = r->rx.ctx;
	if (EVP_DecryptInit_ex(x, NULL, NULL, NULL, nonce) != 1 ||
	    EVP_DecryptUpdate(x, NULL, &outl, aad, (int)aad_len) != 1 ||
	    (n && EVP_DecryptUpdate(x, out, &outl, c, (int)n) != 1) ||
	    EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) != 1 ||
	    EVP_DecryptFinal_ex(x, out + n, &outl) != 1)
		return -TLS_REC_AD_BAD_RECORD_MAC;
	r->rx.seq++;
	if (!v13) {
		*type = rec[0];
		return (int)n;
	}
	/* TLSInnerPlaintext: content, type, zero padding; no type at all
	 * (all zeros) is unexpected_message (RFC 8446 5.4). */
	while (n && out[n - 1] == 0)
		n--;
	if (!n)
		return -TLS_REC_AD_UNEXPECTED_MESSAGE;
	*type = out[n - 1];
	return (int)(n - 1);
}

int tls_rec_rekey(struct tls_rec *r, enum tls_ktls_dir dir)
{
	union tls_ktls_crypto_info ci;
	size_t len;
	int rc = -1;

	if (r->version != TLS_1_3_VERSION || !r->rekey)
		return -1;
	if (tls_ktls_rekey_next(r->rekey, dir, &ci, &len) == 0)
		rc = dir_set(dir == TLS_KTLS_TX ? &r->tx : &r->rx, r->version,
			     r->cipher, &ci, dir == TLS_KTLS_TX);
	OPENSSL_cleanse(&ci, sizeof(ci));
	return rc;
}
