/* The TLS record layer after the handshake, without OpenSSL's SSL object:
 * AEAD records (TLS 1.2 AES-GCM / ChaCha20-Poly1305, TLS 1.3) sealed and
 * opened with the traffic keys the kTLS hand-off exports. What the kernel
 * does for kTLS connections, in userspace, so an established userspace
 * TLS connection keeps two cipher contexts (about 2 KiB) instead of an
 * SSL object (about 20 KiB).
 *
 * Internal to tls/: tls.c is its only user; tls.h is the module's
 * interface. A tls_rec belongs to one thread. */
#ifndef KITE_TLS_REC_H
#define KITE_TLS_REC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "tls/tls.h"

#define TLS_REC_HEADER 5
#define TLS_REC_PLAIN_MAX 16384
/* Largest record a peer may send (RFC 8446 5.2: 2^14 + 256). TLS 1.2
 * allows 2^14 + 2048 (RFC 5246 6.2.3) for CBC and compression; with the
 * AEAD suites, the only ones here, a record of 2^14 bytes is 2^14 + 24
 * long, so the TLS 1.3 bound holds for both. */
#define TLS_REC_CIPHER_MAX (TLS_REC_PLAIN_MAX + 256)
/* Bytes a sealed record adds to its plaintext, at most: header, TLS 1.2
 * explicit nonce, TLS 1.3 inner content type, tag. */
#define TLS_REC_OVERHEAD (TLS_REC_HEADER + 8 + 1 + 16)

/* Alerts (RFC 8446 6) tls_rec_open names, negated, when a record fails. */
enum tls_rec_alert {
	TLS_REC_AD_UNEXPECTED_MESSAGE = 10,
	TLS_REC_AD_BAD_RECORD_MAC = 20,
	TLS_REC_AD_RECORD_OVERFLOW = 22,
	TLS_REC_AD_INTERNAL_ERROR = 80,
};

enum tls_rec_type {
	TLS_REC_ALERT = 21,
	TLS_REC_HANDSHAKE = 22,
	TLS_REC_DATA = 23,
};

struct tls_rec;

/* From the keys tls_conn_export_ktls gives (both directions, record
 * sequence numbers); takes k->rekey (TLS 1.3 secrets, for KeyUpdate).
 * NULL on allocation failure or an unknown cipher. */
struct tls_rec *tls_rec_new(struct tls_ktls_keys *k);
void tls_rec_free(struct tls_rec *r);

/* Seals n <= TLS_REC_PLAIN_MAX bytes of type into out (room for
 * n + TLS_REC_OVERHEAD); returns the record's length, 0 on failure (also
 * when the sequence number would wrap, RFC 8446 5.3). */
size_t tls_rec_seal(struct tls_rec *r, uint8_t type, const uint8_t *p,
		    size_t n, uint8_t *out);

/* The same from pieces that add up to n bytes, encrypted where they lie
 * (no gathering copy). */
size_t tls_rec_sealv(struct tls_rec *r, uint8_t type, const struct iovec *iov,
		     unsigned niov, size_t n, uint8_t *out);

/* Opens one whole record rec[0..len) (header included, its length field
 * agreeing with len) into out (room for len); returns the plaintext
 * length and its content type in *type, or minus the alert to send
 * (enum tls_rec_alert): bad_record_mac if it does not authenticate,
 * record_overflow if its plaintext could exceed 2^14 bytes (TLS 1.3:
 * 2^14 + 1 with the inner type and padding), unexpected_message for a
 * TLS 1.3 record that is not application data outside or is all zeros
 * inside, internal_error when the sequence number would wrap. Nothing in
 * out is meant to be used unless it returns >= 0. */
int tls_rec_open(struct tls_rec *r, const uint8_t *rec, size_t len,
		 uint8_t *out, uint8_t *type);

/* TLS 1.3 KeyUpdate: the direction's next traffic key. 0 or -1. */
int tls_rec_rekey(struct tls_rec *r, enum tls_ktls_dir dir);

/* 0x0303 with TLS 1.2 and 1.3 (the record version); 1 for TLS 1.3. */
int tls_rec_is_tls13(const struct tls_rec *r);

#endif
