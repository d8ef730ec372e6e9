/* TLS for listeners: OpenSSL 3 server side, bytes in / bytes out.
 *
 * Nothing here touches a socket (io_uring owns every syscall of the
 * engine; the one exception is the startup probe tls_kernel_ktls_support).
 * Ciphertext from the socket goes in with tls_conn_feed, plaintext comes
 * out in a caller-owned struct tls_buf; ciphertext to send accumulates in
 * the connection and is taken with tls_conn_pending_out/consume_out.
 *
 * Threads: a tls_server is immutable once built and may be shared by every
 * shard (atomic refcount). A tls_conn belongs to one shard thread.
 *
 * Resumption: a listener's server issues one stateless session ticket per
 * handshake (not on PSK listeners); any shard opens it. Ticket keys
 * rotate hourly, and a server built by a reload opens no ticket of the
 * one it replaces.
 *
 * Engine call sequence:
 *   accept:     c = tls_conn_new(srv)
 *   each recv:  rc = tls_conn_feed(c, buf, n, &plain)
 *               hand plain.data[0..plain.len) to the MQTT decoder
 *               (also when rc is TLS_HANDSHAKE_DONE or TLS_CLOSED);
 *               then send tls_conn_pending_out() if non-empty, and call
 *               tls_conn_consume_out(c, sent) from the send completion.
 *               TLS_ERROR: log tls_conn_error(c), send what is pending
 *               (a TLS alert) best effort, close.
 *               TLS_CLOSED: the peer sent close_notify; close.
 *   send MQTT:  tls_conn_write(c, bytes, n), then send pending_out.
 *   kTLS:       after TLS_HANDSHAKE_DONE and once pending_out is drained
 *               and no recv is in flight: tls_conn_export_ktls(c, &k, 0);
 *               on TLS_KTLS_OK: setsockopt(TCP_ULP "tls"), setsockopt(SOL_TLS,
 *               TLS_TX, &k.tx, k.tx_len), (SOL_TLS, TLS_RX, &k.rx, k.rx_len),
 *               tls_ktls_keys_wipe(&k), copy tls_conn_identity() if needed,
 *               tls_conn_free(c). TLS_KTLS_AGAIN: a partial record is
 *               buffered (or output is pending): stay in userspace, retry
 *               after the next feed. TLS_KTLS_UNSUPPORTED: stay in
 *               userspace for good.
 *   close:      tls_conn_close_notify(c) (optional), send pending, free. */
#ifndef KITE_TLS_H
#define KITE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <linux/tls.h>

/* One listener's options: Mosquitto's names, plain values (NULL = unset). */
struct tls_listener_opts {
	const char *cafile, *capath, *certfile, *keyfile, *crlfile;
	const char *dhparamfile;
	const char *ciphers;	   /* TLS 1.2 cipher list; NULL = default */
	const char *ciphers_tls13; /* "ciphers_tls1.3"; NULL = default */
	const char *tls_version;   /* minimum: "tlsv1.2" (NULL) or "tlsv1.3" */
	bool require_certificate;
	bool use_identity_as_username;
	bool use_subject_as_username;
	/* TLS-PSK (Mosquitto's psk_hint / psk_file): on when psk_hint is
	 * set; then certfile/keyfile are optional. psk_file lines are
	 * "identity:hexkey". TLS 1.2 PSK suites and TLS 1.3 external PSKs
	 * (SHA-256 suites, as OpenSSL's PSK callback allows). The client's
	 * identity is tls_conn_identity(). */
	const char *psk_hint;
	const char *psk_file;
	/* Not a Mosquitto option: check the CRL of every CA in the chain
	 * (X509_V_FLAG_CRL_CHECK_ALL). false = Mosquitto's behaviour, which
	 * checks the client certificate only. */
	bool crl_check_all;
};

enum tls_rc {
	TLS_ERROR = -1,		/* fatal; reason in tls_conn_error() */
	TLS_OK = 0,		/* plaintext was appended */
	TLS_WANT_MORE = 1,	/* input consumed, nothing complete yet */
	TLS_HANDSHAKE_DONE = 2, /* returned once; plaintext may follow */
	TLS_CLOSED = 3,		/* peer's close_notify; plaintext may precede */
};

/* Plaintext sink for tls_conn_feed: the caller owns it, the module
 * appends (growing data with realloc). Start zeroed; reset len to 0 after
 * consuming; release with tls_buf_free. Growth per feed is bounded by the
 * ciphertext fed plus one buffered record. */
struct tls_buf {
	uint8_t *data;
	size_t len, cap;
};

void tls_buf_free(struct tls_buf *b);

/* ---- server (one per listener) ---------------------------------------- */

struct tls_server;

/* Builds the listener's SSL_CTX. On failure returns NULL and writes a
 * reason like "keyfile /etc/k.pem: does not match certfile /etc/c.pem"
 * into err. Also the SIGHUP path: build a new server from the same opts;
 * on failure keep the old one. Existing connections keep their own
 * SSL objects (and a reference to the server they started on). */
struct tls_server *tls_server_new(const struct tls_listener_opts *o,
				  char *err, size_t errlen);
void tls_server_ref(struct tls_server *s);
void tls_server_unref(struct tls_server *s);

/* ---- connection ------------------------------------------------------- */

struct tls_conn;

/* NULL on allocation failure. Takes a reference on srv. */
struct tls_conn *tls_conn_new(struct tls_server *srv);
void tls_conn_free(struct tls_conn *c);

/* Feeds ciphertext received from the socket; all of it is consumed. Runs
 * the handshake, then decrypts every complete record, appending plaintext
 * to *plain. Afterwards, ciphertext may be pending (handshake flights,
 * alerts). Returns enum tls_rc. After TLS_ERROR or TLS_CLOSED, further
 * calls return the same value. */
int tls_conn_feed(struct tls_conn *c, const uint8_t *in, size_t len,
		  struct tls_buf *plain);

/* Encrypts plaintext into the pending output (records of up to 16 KiB).
 * Only after the handshake. TLS_OK or TLS_ERROR. Batch a loop turn's
 * packets into one call: each call costs at least one record. */
int tls_conn_write(struct tls_conn *c, const uint8_t *plain, size_t len);

/* One record from pieces of at most 16 KiB in all, encrypted where they
 * lie once the records left OpenSSL (tls_conn_shed); before that they are
 * gathered into scratch (16 KiB, the caller's) for OpenSSL. TLS_OK or
 * TLS_ERROR. */
int tls_conn_writev(struct tls_conn *c, const struct iovec *iov, unsigned n,
		    uint8_t *scratch);

/* Queues a close_notify alert. TLS_OK or TLS_ERROR. */
int tls_conn_close_notify(struct tls_conn *c);

/* Ciphertext waiting to be sent: returns its length and points *p at it
 * (valid until the next call on c). consume_out(n) after the socket took
 * n bytes; n <= the pending length. */
size_t tls_conn_pending_out(struct tls_conn *c, const uint8_t **p);
void tls_conn_consume_out(struct tls_conn *c, size_t n);
/* Or hands the whole pending output over, without a copy: the bytes are
 * buf[*off, *off + *len); the caller frees buf (NULL when len is 0),
 * and c's output starts empty. Records are sealed straight into this
 * buffer, so the send may own it until the kernel has read it. */
uint8_t *tls_conn_take_out(struct tls_conn *c, size_t *off, size_t *len);

bool tls_conn_handshake_done(const struct tls_conn *c);

/* For a connection that stays in userspace (no kTLS): once the
 * handshake is done and OpenSSL holds no unread bytes (now, or after a
 * later feed), the records move out of OpenSSL (tls/rec.h) and the SSL
 * object is freed: an idle connection keeps two cipher contexts instead
 * of ~20 KiB. Everything else works as before; tls_conn_export_ktls then
 * says TLS_KTLS_UNSUPPORTED. A CBC suite, or a TLS 1.3 key update
 * already done in OpenSSL, keeps OpenSSL. Server side only. */
void tls_conn_shed(struct tls_conn *c);
/* The handshake resumed a session from a ticket (no certificate
 * exchange; the identity is the one the ticket was issued to). */
bool tls_conn_resumed(const struct tls_conn *c);

/* Why the connection failed (NULL if it did not), e.g. "client
 * certificate refused: certificate has expired (subject CN=device-7)",
 * "not a TLS handshake (first byte 0x10, plain MQTT CONNECT?)". */
const char *tls_conn_error(const struct tls_conn *c);

/* After a PSK handshake: the client's PSK identity. Otherwise, after
 * the handshake, as Mosquitto derives the username from the client
 * certificate: the CN when use_identity_as_username (NULL if the CN is
 * missing or holds a NUL byte: refuse the CONNECT); else the RFC 2253
 * subject when use_subject_as_username; else the CN, informational.
 * NULL without a client certificate. Owned by c. */
const char *tls_conn_identity(const struct tls_conn *c);
/* "TLSv1.3", "TLS_AES_128_GCM_SHA256"; NULL before the handshake. */
const char *tls_conn_version(const struct tls_conn *c);
const char *tls_conn_cipher(const struct tls_conn *c);

/* ---- kernel TLS handoff ----------------------------------------------- */

union tls_ktls_crypto_info {
	struct tls_crypto_info info;	/* version, cipher_type */
	struct tls12_crypto_info_aes_gcm_128 aes_gcm_128;
	struct tls12_crypto_info_aes_gcm_256 aes_gcm_256;
	struct tls12_crypto_info_chacha20_poly1305 chacha20_poly1305;
};

/* TLS 1.3 traffic secrets kept past the handoff, for key updates
 * (RFC 8446 4.6.3). Opaque; owned by whoever holds the connection. */
struct tls_ktls_rekey;

/* Ready for setsockopt(fd, SOL_TLS, TLS_TX, &tx, tx_len) and TLS_RX.
 * Holds key material: tls_ktls_keys_wipe() it on every path. */
struct tls_ktls_keys {
	uint16_t version;     /* TLS_1_2_VERSION or TLS_1_3_VERSION */
	uint16_t cipher_type; /* TLS_CIPHER_AES_GCM_128, _256, CHACHA20_.. */
	union tls_ktls_crypto_info tx, rx;
	size_t tx_len, rx_len;
	/* TLS 1.3 with TLS_KTLS_KEEP_SECRETS: the caller's to keep (and to
	 * tls_ktls_rekey_free); NULL otherwise. Not touched by _wipe. */
	struct tls_ktls_rekey *rekey;
};

enum tls_ktls_rc {
	TLS_KTLS_UNSUPPORTED = -1, /* cipher/state not kTLS-capable: stay */
	TLS_KTLS_OK = 0,
	TLS_KTLS_AGAIN = 1,	   /* partial record buffered or output
				      pending: retry after next feed/send */
};

/* Exports both directions' keys and record sequence numbers. Every
 * complete record that arrived with or after the Finished message was
 * already decrypted and returned by tls_conn_feed, so no plaintext is
 * left over: on TLS_KTLS_OK the next byte on the socket starts a record
 * for the kernel. Afterwards c only accepts tls_conn_free (and the
 * identity/version/cipher getters). Returns enum tls_ktls_rc; out is
 * wiped unless TLS_KTLS_OK. */
int tls_conn_export_ktls(struct tls_conn *c, struct tls_ktls_keys *out,
			 unsigned flags);
/* The kernel refused the exported keys before taking any of them (the
 * TCP_ULP or the first key setsockopt failed: e.g. the peer already sent
 * its FIN, so the socket is no longer ESTABLISHED). Nothing left
 * OpenSSL: c goes on in userspace as if never exported; it cannot be
 * exported again. */
void tls_conn_ktls_declined(struct tls_conn *c);
void tls_ktls_keys_wipe(struct tls_ktls_keys *k);

enum tls_ktls_flags {
	/* TLS 1.3: also hand out the traffic secrets (out->rekey), so the
	 * keys can follow the peer's KeyUpdate once OpenSSL is gone. */
	TLS_KTLS_KEEP_SECRETS = 1 << 0,
};

enum tls_ktls_dir { TLS_KTLS_RX, TLS_KTLS_TX };

/* One key update in one direction: the traffic secret moves on
 * (HKDF-Expand-Label "traffic upd") and *ci / *len receive the kernel
 * struct of the new key, record sequence 0. 0 or -1 (r unchanged). */
int tls_ktls_rekey_next(struct tls_ktls_rekey *r, enum tls_ktls_dir dir,
			union tls_ktls_crypto_info *ci, size_t *len);
/* Wipes the secrets and frees r; NULL is fine. */
void tls_ktls_rekey_free(struct tls_ktls_rekey *r);

enum tls_kernel_ktls {
	TLS_KERNEL_NO_ULP,    /* CONFIG_TLS off: userspace TLS only */
	TLS_KERNEL_NO_REKEY,  /* kTLS, but keys are set once (Linux < 6.14) */
	TLS_KERNEL_REKEY,     /* TLS 1.3 keys can be replaced (KeyUpdate) */
};

/* What this kernel's TLS ULP can do, tried on a throwaway connected
 * loopback TCP pair. Call once at startup; makes syscalls. */
enum tls_kernel_ktls tls_kernel_ktls_support(void);

/* The client side, for bridges: a context per bridge (CA, optional
 * client certificate, minimum version, ALPN) and a connection that
 * starts its handshake at once (the ClientHello is pending output).
 * verify_host checks the remote's certificate names `host`
 * (bridge_insecure turns that off). The connection then works as a
 * server one: tls_conn_feed, tls_conn_write, tls_conn_export_ktls (TX
 * is the client's key; session tickets already read do not block it),
 * tls_conn_free. No tls_conn_shed. */
struct tls_client;
struct tls_client_opts {
	const char *cafile, *capath;	 /* "" or NULL: none */
	const char *certfile, *keyfile;	 /* both or neither */
	const char *version;		 /* "tlsv1.2", "tlsv1.3" or NULL */
	const char *alpn;
	/* TLS-PSK instead of certificates (Mosquitto's bridge_identity and
	 * bridge_psk, the key in hex): TLS 1.2 PSK suites and TLS 1.3
	 * external PSK; no CA then. */
	const char *psk_identity, *psk_hex;
	/* bridge_require_ocsp: the remote must staple an OCSP response
	 * that its CA (our trust store) signed, saying its certificate is
	 * good; else the handshake fails. */
	bool require_ocsp;
};
struct tls_client *tls_client_new(const struct tls_client_opts *o, char *err,
				  size_t errlen);
void tls_client_free(struct tls_client *cl);
struct tls_conn *tls_client_conn_new(struct tls_client *cl, const char *host,
				     bool verify_host);

#endif
