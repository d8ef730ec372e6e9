/* libFuzzer target for tls/tls.c: hostile bytes into a server tls_conn.
 *
 * The first input byte picks a mode:
 *   0: the rest is raw socket input to a fresh connection, fed in chunks
 *      whose sizes come from the input;
 *   1: a real ClientHello (captured once from an OpenSSL client) patched
 *      at (offset, value) pairs taken from the input, then fed;
 *   2, 3: a real TLS 1.3 (2) or 1.2 (3) handshake with an in-memory
 *      client, then the rest as post-handshake records (wrapped in
 *      application-data headers or raw, per chunk), then a kTLS export;
 *   4, 5: the same handshake, then the records leave OpenSSL
 *      (tls_conn_shed: kite's own record layer, tls/rec.c) and the input
 *      scripts the client: real records, records with one byte flipped,
 *      TLS 1.3 key updates, raw bytes, and (TLS 1.3, before any real
 *      record) the input's bytes as a whole inner plaintext (content,
 *      type, padding: what no stack would send) sealed with the client's
 *      key, so kite's parsing of alerts, handshake messages and padding
 *      after decryption is reached. A real record the client sealed
 *      must come out as exactly its plaintext while nothing was
 *      corrupted before it.
 * Invariants: the return code is one of enum tls_rc; a failure has a
 * reason; plaintext never exceeds the ciphertext fed; a failed or closed
 * connection stays so. The certificate is generated at startup into a
 * mkdtemp directory. Only our own bugs abort. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tls/tls.h"
#include "tests/tools/tls13_craft.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                    \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz_tls: %s:%d: %s\n", __FILE__,    \
				__LINE__, #cond);                             \
			abort();                                              \
		}                                                             \
	} while (0)

static char dir[64], cert_path[96], key_path[96];
static struct tls_server *srv;
static uint8_t hello[4096];
static size_t hello_len;

static void cleanup(void)
{
	tls_server_unref(srv);
	unlink(cert_path);
	unlink(key_path);
	rmdir(dir);
}

static void write_cert(void)
{
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	BIO *b;

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -86400);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"localhost", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_sign(x, k, EVP_sha256());
	b = BIO_new_file(cert_path, "w");
	PEM_write_bio_X509(b, x);
	BIO_free(b);
	b = BIO_new_file(key_path, "w");
	PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
	BIO_free(b);
	X509_free(x);
	EVP_PKEY_free(k);
}

/* The TLS 1.3 client's application traffic secret (its keylog). */
static struct tls13_craft_secret client_secret;

static void client_keylog_cb(const SSL *ssl, const char *line)
{
	(void)ssl;
	tls13_craft_keylog(line, &client_secret);
}

static SSL *client_new(int version, BIO **to_client, BIO **from_client)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *cl;

	SSL_CTX_set_min_proto_version(ctx, version);
	SSL_CTX_set_max_proto_version(ctx, version);
	/* One suite, so crafted records know their cipher and hash. */
	SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256");
	SSL_CTX_set_keylog_callback(ctx, client_keylog_cb);
	cl = SSL_new(ctx);
	SSL_CTX_free(ctx);
	*to_client = BIO_new(BIO_s_mem());
	*from_client = BIO_new(BIO_s_mem());
	SSL_set_bio(cl, *to_client, *from_client);
	SSL_set_connect_state(cl);
	return cl;
}

static void init(void)
{
	struct tls_listener_opts o = {0};
	char err[256];
	BIO *in, *out;
	SSL *cl;

	strcpy(dir, "/tmp/kite-fuzz-tls.XXXXXX");
	FUZZ_ASSERT(mkdtemp(dir));
	snprintf(cert_path, sizeof(cert_path), "%s/cert.pem", dir);
	snprintf(key_path, sizeof(key_path), "%s/key.pem", dir);
	write_cert();
	o.certfile = cert_path;
	o.keyfile = key_path;
	srv = tls_server_new(&o, err, sizeof(err));
	if (!srv)
		fprintf(stderr, "fuzz_tls: %s\n", err);
	FUZZ_ASSERT(srv);
	atexit(cleanup);
	cl = client_new(TLS1_3_VERSION, &in, &out);
	SSL_do_handshake(cl);
	hello_len = (size_t)BIO_read(out, hello, sizeof(hello));
	FUZZ_ASSERT(hello_len > 5 && hello_len < sizeof(hello));
	SSL_free(cl);
	ERR_clear_error();
}

/* Feeds and checks the invariants; returns the code. */
static int feed(struct tls_conn *c, const uint8_t *p, size_t n, struct tls_buf *plain,
		size_t *fed)
{
	size_t before = plain->len;
	int rc = tls_conn_feed(c, p, n, plain);

	*fed += n;
	FUZZ_ASSERT(rc >= TLS_ERROR && rc <= TLS_CLOSED);
	FUZZ_ASSERT(plain->len >= before && plain->len <= *fed);
	FUZZ_ASSERT(rc != TLS_ERROR || tls_conn_error(c));
	FUZZ_ASSERT(rc == TLS_ERROR || !tls_conn_error(c));
	if (rc == TLS_HANDSHAKE_DONE)
		FUZZ_ASSERT(tls_conn_handshake_done(c));
	return rc;
}

/* What the socket would send; nobody listens. */
static void drop_out(struct tls_conn *c)
{
	const uint8_t *out;

	tls_conn_consume_out(c, tls_conn_pending_out(c, &out));
}

static void fuzz_raw(const uint8_t *d, size_t n)
{
	struct tls_conn *c = tls_conn_new(srv);
	struct tls_buf plain = {0};
	size_t fed = 0;
	int rc = TLS_WANT_MORE;

	while (n && rc != TLS_ERROR && rc != TLS_CLOSED) {
		size_t k = 1 + d[0] % 128;

		d++, n--;
		if (k > n)
			k = n;
		rc = feed(c, d, k, &plain, &fed);
		drop_out(c);
		d += k, n -= k;
	}
	if (rc == TLS_ERROR || rc == TLS_CLOSED) /* sticky */
		FUZZ_ASSERT(feed(c, (const uint8_t *)"\x16", 1, &plain, &fed) == rc);
	tls_buf_free(&plain);
	tls_conn_free(c);
}

static void fuzz_hello(const uint8_t *d, size_t n)
{
	uint8_t msg[sizeof(hello)];
	size_t len = hello_len;

	memcpy(msg, hello, len);
	for (; n >= 3; d += 3, n -= 3) {
		size_t off = ((size_t)d[0] << 8 | d[1]) % len;

		msg[off] = d[2];
	}
	if (n) /* a tail truncates */
		len -= d[0] % len;

	struct tls_conn *c = tls_conn_new(srv);
	struct tls_buf plain = {0};
	size_t fed = 0;
	int rc = feed(c, msg, len, &plain, &fed);

	FUZZ_ASSERT(rc == TLS_WANT_MORE || rc == TLS_ERROR);
	tls_buf_free(&plain);
	tls_conn_free(c);
}

/* Plays the in-memory client's side until the handshake is done. */
static bool handshake(SSL *cl, BIO *to_client, BIO *from_client, struct tls_conn *c,
		      struct tls_buf *plain, size_t *fed)
{
	uint8_t buf[8192];
	const uint8_t *out;
	size_t n;
	int k;

	for (int i = 0; i < 10 && !tls_conn_handshake_done(c); i++) {
		SSL_do_handshake(cl);
		while ((k = BIO_read(from_client, buf, sizeof(buf))) > 0)
			if (feed(c, buf, (size_t)k, plain, fed) == TLS_ERROR)
				return false;
		n = tls_conn_pending_out(c, &out);
		BIO_write(to_client, out, (int)n);
		tls_conn_consume_out(c, n);
	}
	SSL_do_handshake(cl);
	return tls_conn_handshake_done(c);
}

static void fuzz_after_handshake(int version, const uint8_t *d, size_t n)
{
	BIO *to_client, *from_client;
	SSL *cl = client_new(version, &to_client, &from_client);
	struct tls_conn *c = tls_conn_new(srv);
	struct tls_buf plain = {0};
	struct tls_ktls_keys keys;
	size_t fed = 0;
	int rc = TLS_OK;

	FUZZ_ASSERT(handshake(cl, to_client, from_client, c, &plain, &fed));
	while (n && rc != TLS_ERROR && rc != TLS_CLOSED) {
		uint8_t rec[5 + 256];
		size_t k = d[0] & 0x7f, hdr = 0;
		bool wrap = d[0] & 0x80;

		d++, n--;
		if (k > n)
			k = n;
		if (wrap) { /* an application-data header around the bytes */
			rec[0] = 23;
			rec[1] = rec[2] = 3;
			rec[3] = 0;
			rec[4] = (uint8_t)k;
			hdr = 5;
		}
		memcpy(rec + hdr, d, k);
		rc = feed(c, rec, hdr + k, &plain, &fed);
		drop_out(c);
		d += k, n -= k;
	}
	if (rc == TLS_OK || rc == TLS_WANT_MORE) {
		int e = tls_conn_export_ktls(c, &keys, 0);

		FUZZ_ASSERT(e >= TLS_KTLS_UNSUPPORTED && e <= TLS_KTLS_AGAIN);
		tls_ktls_keys_wipe(&keys);
	}
	tls_buf_free(&plain);
	tls_conn_free(c);
	SSL_free(cl);
	ERR_clear_error();
}

/* Everything the client has sealed so far, fed to c. */
static int feed_client(BIO *from_client, struct tls_conn *c,
		       struct tls_buf *plain, size_t *fed, int flip_at,
		       uint8_t flip)
{
	uint8_t buf[8192];
	int k, rc = TLS_WANT_MORE;

	while ((k = BIO_read(from_client, buf, sizeof(buf))) > 0) {
		if (flip_at >= 0 && flip_at < k)
			buf[flip_at] ^= flip ? flip : 1;
		flip_at = -1;
		rc = feed(c, buf, (size_t)k, plain, fed);
		drop_out(c);
		if (rc == TLS_ERROR || rc == TLS_CLOSED)
			break;
	}
	return rc;
}

static void fuzz_shed(int version, const uint8_t *d, size_t n)
{
	BIO *to_client, *from_client;
	SSL *cl = client_new(version, &to_client, &from_client);
	struct tls_conn *c = tls_conn_new(srv);
	struct tls_buf plain = {0};
	size_t fed = 0;
	bool clean = true; /* nothing corrupted or raw fed so far */
	bool real_sent = false; /* the client's own records: its seq moved */
	uint64_t crafted = 0;	/* crafted records sent (their seq) */
	int rc = TLS_OK;

	client_secret.len = 0;
	FUZZ_ASSERT(handshake(cl, to_client, from_client, c, &plain, &fed));
	drop_out(c);
	/* The client reads the server's tickets, as a real one would. */
	uint8_t sink[256];
	while (SSL_read(cl, sink, sizeof(sink)) > 0)
		;
	tls_conn_shed(c);
	while (n >= 2 && rc != TLS_ERROR && rc != TLS_CLOSED) {
		uint8_t op = d[0] % 5, arg = d[1];
		size_t k = (size_t)(arg & 0x7f) + 1, before = plain.len;

		d += 2, n -= 2;
		if (k > n)
			k = n;
		/* A crafted record moved the sequence past the client's. */
		if (op <= 2 && crafted)
			clean = false;
		if (op <= 2)
			real_sent = true;
		switch (op) {
		case 0: /* a real record */
			if (!k || SSL_write(cl, d, (int)k) != (int)k)
				break;
			rc = feed_client(from_client, c, &plain, &fed, -1, 0);
			if (clean && rc != TLS_ERROR) {
				FUZZ_ASSERT(plain.len == before + k);
				FUZZ_ASSERT(!memcmp(plain.data + before, d, k));
			}
			break;
		case 1: /* a real record, one byte flipped */
			if (!k || SSL_write(cl, d, (int)k) != (int)k)
				break;
			rc = feed_client(from_client, c, &plain, &fed, arg % 40,
					 k ? d[0] : 1);
			FUZZ_ASSERT(plain.len == before || !clean ||
				    rc != TLS_ERROR);
			clean = false;
			break;
		case 2: /* TLS 1.3 key update, then a record under it */
			if (version != TLS1_3_VERSION || !k ||
			    !SSL_key_update(cl, arg & 0x80
						    ? SSL_KEY_UPDATE_REQUESTED
						    : SSL_KEY_UPDATE_NOT_REQUESTED) ||
			    SSL_write(cl, d, (int)k) != (int)k)
				break;
			rc = feed_client(from_client, c, &plain, &fed, -1, 0);
			if (clean && rc != TLS_ERROR) {
				FUZZ_ASSERT(plain.len == before + k);
				FUZZ_ASSERT(!memcmp(plain.data + before, d, k));
			}
			break;
		case 3: /* raw bytes */
			rc = feed(c, d, k, &plain, &fed);
			drop_out(c);
			clean = false;
			break;
		default: { /* TLS 1.3: the bytes as a whole inner plaintext */
			uint8_t rec[5 + 128 + 16];
			struct tls13_craft_keys ck;
			size_t w;
			if (version != TLS1_3_VERSION || real_sent ||
			    !tls13_craft_keys(&client_secret, &ck))
				break;
			ck.seq = crafted;
			if (!(w = tls13_craft_seal(&ck, d, k, rec)))
				break;
			crafted++;
			rc = feed(c, rec, w, &plain, &fed);
			drop_out(c);
			/* Data, when the last non-zero byte says so; anything
			 * else may move the keys or end the connection. */
			size_t m = k;
			while (m && !d[m - 1])
				m--;
			if (!m || d[m - 1] != 23)
				clean = false;
			else if (clean && m > 1) {
				FUZZ_ASSERT(rc != TLS_ERROR);
				FUZZ_ASSERT(plain.len == before + m - 1);
				FUZZ_ASSERT(!memcmp(plain.data + before, d, m - 1));
			}
			break;
		}
		}
		d += k, n -= k;
		ERR_clear_error();
	}
	tls_buf_free(&plain);
	tls_conn_free(c);
	SSL_free(cl);
	ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!srv)
		init();
	if (!size)
		return 0;
	switch (data[0] % 6) {
	case 0:
		fuzz_raw(data + 1, size - 1);
		break;
	case 1:
		fuzz_hello(data + 1, size - 1);
		break;
	case 2:
		fuzz_after_handshake(TLS1_3_VERSION, data + 1, size - 1);
		break;
	case 3:
		fuzz_after_handshake(TLS1_2_VERSION, data + 1, size - 1);
		break;
	case 4:
		fuzz_shed(TLS1_3_VERSION, data + 1, size - 1);
		break;
	default:
		fuzz_shed(TLS1_2_VERSION, data + 1, size - 1);
		break;
	}
	return 0;
}
