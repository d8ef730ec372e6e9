/* TLS for listeners over OpenSSL 3: see tls.h for the contract.
 *
 * I/O goes through one custom BIO per connection (as HAProxy does): its
 * read side serves the bytes of the current tls_conn_feed call straight
 * from the caller's buffer (OpenSSL copies them into its record buffer, no
 * intermediate memory BIO), its write side appends to the connection's
 * output buffer, which the engine sends and consumes.
 *
 * kTLS: OpenSSL 3.0 does not hand out traffic keys. TLS 1.3 traffic
 * secrets are captured by the keylog callback and expanded with
 * HKDF-Expand-Label (RFC 8446 7.1, 7.3); TLS 1.2 keys come from the key
 * block (RFC 5246 6.3) computed with TLS1-PRF from the master secret.
 * Record sequence numbers are counted with the message callback (one
 * SSL3_RT_HEADER event per record): received ones from the end of the
 * handshake, sent ones (TLS 1.3) from the moment our application traffic
 * key is installed, since the NewSessionTicket goes out under it before
 * the handshake ends. A bridge's client side exports the same way, the
 * directions mirrored; the tickets it receives are counted, not fatal.
 *
 * Session resumption: stateless tickets (RFC 5077, RFC 8446 4.6.1), no
 * server-side cache. A listener's tls_server holds a random ticket
 * master secret, shared by every shard (the server object is), so a
 * client may come back on any shard. The keys that seal tickets are
 * derived from it per epoch of TLS_TICKET_EPOCH_S: rotation needs no
 * timer, no lock and no shared mutable state, and a ticket opens in its
 * own epoch and the next one. A reload (SIGHUP) builds a new server and
 * with it a new secret: tickets issued before it no longer open, so a
 * revoked certificate (crlfile) or a changed CA is checked again in a
 * full handshake. */
#include "tls/tls.h"
#include "core/ratecap.h"
#include "tls/rec.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ocsp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* The kernel's key structs are what setsockopt expects byte for byte. */
_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_128) == 4 + 8 + 16 + 4 + 8,
	       "kernel aes_gcm_128 layout");
_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_256) == 4 + 8 + 32 + 4 + 8,
	       "kernel aes_gcm_256 layout");
_Static_assert(sizeof(struct tls12_crypto_info_chacha20_poly1305) == 4 + 12 + 32 + 8,
	       "kernel chacha20_poly1305 layout");

/* Largest traffic secret (SHA-384) and key block (2 x 32 key + 2 x 12 IV). */
#define TLS_SECRET_MAX 48
#define TLS_KEY_BLOCK_MAX (2 * 32 + 2 * 12)
/* Plaintext buffer growth step. */
#define TLS_PLAIN_GROW_MIN 4096
/* An output buffer this large is freed once drained rather than kept: any,
 * so an idle connection holds none (the next send allocates one). */
#define TLS_OUT_KEEP_MAX 0
#define TLS_RECORD_HEADER_LEN 5

/* TLS 1.3 suites when ciphers_tls1.3 is not given (see server_ciphers). */
#define TLS13_SUITES_DEFAULT \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* Bounds on a psk_file: entries, identity length (the TLS maximum). */
#define TLS_PSK_ENTRIES_MAX 65536
#define TLS_PSK_IDENTITY_MAX 256

/* Ticket keys change every epoch; a ticket opens during its own epoch and
 * the next, so it lives between one and two epochs (its advertised
 * lifetime is the upper bound). */
#define TLS_TICKET_EPOCH_S 3600
#define TLS_TICKET_LIFETIME_S (2 * TLS_TICKET_EPOCH_S)
#define TLS_TICKET_SECRET_LEN 32
#define TLS_TICKET_ID_LEN 8

/* A connection may ask for RATECAP_EVENTS client KeyUpdates in any
 * second (io/ktls.c has the same bound for kTLS connections); the error
 * names the number. */
_Static_assert(RATECAP_EVENTS == 8, "the error says 8 key updates");
/* Records in a row that carry no application data (empty ones, warning
 * and user_canceled alerts, declined renegotiations) a userspace
 * connection takes: each costs a decryption and may cost an answer, for
 * nothing. OpenSSL's own bound on empty records (MAX_EMPTY_RECORDS). */
#define TLS_IDLE_RECORDS_MAX 32

struct tls_psk {
	char *identity;
	uint8_t key[PSK_MAX_PSK_LEN];
	unsigned key_len;
};

struct tls_server {
	SSL_CTX *ctx;
	atomic_int refs;
	bool use_identity;
	bool use_subject;
	struct tls_psk *psk; /* sorted by identity */
	size_t psk_count;
	/* Tickets: key_name = id || epoch (big endian); the id tells our
	 * tickets from another listener's or an older configuration's. */
	uint64_t uid; /* unique per server object, for the key cache */
	uint8_t ticket_id[TLS_TICKET_ID_LEN];
	uint8_t ticket_secret[TLS_TICKET_SECRET_LEN];
};

struct tls_conn {
	SSL *ssl;
	struct tls_server *srv;
	/* The current feed's unread input (BIO read side). */
	const uint8_t *in;
	size_t in_len;
	/* Pending ciphertext: out[out_head, out_len). */
	uint8_t *out;
	size_t out_head, out_len, out_cap;
	char *identity;
	char *error;
	/* Records after the handshake: the kTLS sequence offsets. */
	uint64_t rx_records, tx_records;
	uint8_t secret_tx[TLS_SECRET_MAX], secret_rx[TLS_SECRET_MAX];
	uint8_t secret_tx_len, secret_rx_len;
	bool seen_input;
	bool tx_app_keys; /* TLS 1.3: our application key is installed */
	bool identity_known; /* c->identity is final (NULL or not) */
	/* After tls_conn_shed: records are ours (ssl is NULL), a partial
	 * record waits in part[0, part_len) (allocated only meanwhile). */
	struct tls_rec *rec;
	uint8_t *part;
	size_t part_len;
	bool shed_wanted;
	bool resumed;
	struct ratecap key_updates; /* when the last ones came */
	uint8_t idle_records;	 /* in a row, see TLS_IDLE_RECORDS_MAX */
	bool close_sent;	 /* our close_notify is sealed: no more data */
	const char *version_str, *cipher_str; /* OpenSSL's static names */
	bool hs_done;
	bool closed;
	bool failed;
	bool exported;
	bool ktls_declined; /* exported once, refused: secrets are wiped */
	bool post_hs_message; /* KeyUpdate etc.: keys moved past _0 */
};

/* ---- small helpers ---------------------------------------------------- */

void tls_buf_free(struct tls_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

static void errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* OpenSSL's reason for the last queued error, for messages. */
static const char *ossl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	return r ? r : "unknown OpenSSL error";
}

/* RFC 2253 subject, as Mosquitto's use_subject_as_username. malloc'd. */
static char *name_rfc2253(const X509_NAME *name)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s = NULL, *p;
	long n;

	if (!bio)
		return NULL;
	if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) >= 0) {
		n = BIO_get_mem_data(bio, &p);
		s = n >= 0 ? strndup(p, (size_t)n) : NULL;
	}
	BIO_free(bio);
	return s;
}

/* The first CN as Mosquitto takes it (raw ASN.1 string bytes); NULL if
 * absent or if it holds a NUL byte. malloc'd. */
static char *name_cn(const X509_NAME *name)
{
	int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	const ASN1_STRING *a;
	char *s;

	if (i < 0)
		return NULL;
	a = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
	if (!a || ASN1_STRING_length(a) < 0)
		return NULL;
	s = strndup((const char *)ASN1_STRING_get0_data(a),
		    (size_t)ASN1_STRING_length(a));
	if (s && strlen(s) != (size_t)ASN1_STRING_length(a)) {
		free(s);
		return NULL;
	}
	return s;
}

static void conn_fail(struct tls_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void conn_fail(struct tls_conn *c, const char *fmt, ...)
{
	va_list ap;
	char buf[512];

	c->failed = true;
	if (c->error)
		return; /* the first reason is the real one */
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	c->error = strdup(buf);
}

/* ---- the BIO between OpenSSL and the connection ---------------------- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_method_once = PTHREAD_ONCE_INIT;

static int bio_read_cb(BIO *b, char *buf, int size)
{
	struct tls_conn *c = BIO_get_data(b);
	size_t n;

	BIO_clear_retry_flags(b);
	if (!c->in_len) {
		BIO_set_retry_read(b);
		return -1;
	}
	n = (size_t)size < c->in_len ? (size_t)size : c->in_len;
	memcpy(buf, c->in, n);
	c->in += n;
	c->in_len -= n;
	return (int)n;
}

static int out_reserve(struct tls_conn *c, size_t n)
{
	size_t cap;
	uint8_t *p;

	if (c->out_head && c->out_head == c->out_len)
		c->out_head = c->out_len = 0;
	if (c->out_cap - c->out_len >= n)
		return 0;
	if (c->out_head) { /* compact before growing */
		memmove(c->out, c->out + c->out_head, c->out_len - c->out_head);
		c->out_len -= c->out_head;
		c->out_head = 0;
		if (c->out_cap - c->out_len >= n)
			return 0;
	}
	cap = c->out_cap ? c->out_cap : 1024;
	while (cap - c->out_len < n)
		cap *= 2;
	p = realloc(c->out, cap);
	if (!p)
		return -1;
	c->out = p;
	c->out_cap = cap;
	return 0;
}

static int bio_write_cb(BIO *b, const char *buf, int size)
{
	struct tls_conn *c = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (size <= 0)
		return 0;
	if (out_reserve(c, (size_t)size))
		return -1;
	memcpy(c->out + c->out_len, buf, (size_t)size);
	c->out_len += (size_t)size;
	return size;
}

static long bio_ctrl_cb(BIO *b, int cmd, long num, void *ptr)
{
	/* OpenSSL flushes after each flight; everything else (pending
	 * counts, kTLS queries, DGRAM controls) is "not supported". */
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create_cb(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void bio_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "kite tls conn");

	if (!m)
		return;
	BIO_meth_set_read(m, bio_read_cb);
	BIO_meth_set_write(m, bio_write_cb);
	BIO_meth_set_ctrl(m, bio_ctrl_cb);
	BIO_meth_set_create(m, bio_create_cb);
	bio_method = m;
}

/* ---- callbacks ---------------------------------------------------------- */

static struct tls_conn *conn_of_ssl(const SSL *ssl)
{
	return SSL_get_app_data(ssl);
}

/* Keeps the first refusal's reason: OpenSSL's verify error and the
 * subject of the certificate it concerns. */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL *ssl;
	struct tls_conn *c;
	X509 *cert;
	char *subject;
	int depth;

	if (ok)
		return ok;
	ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
	c = ssl ? conn_of_ssl(ssl) : NULL;
	if (!c || c->error)
		return ok;
	cert = X509_STORE_CTX_get_current_cert(x);
	subject = cert ? name_rfc2253(X509_get_subject_name(cert)) : NULL;
	depth = X509_STORE_CTX_get_error_depth(x);
	if (depth > 0)
		conn_fail(c, "client certificate refused: %s (subject %s, chain depth %d)",
			  X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)),
			  subject ? subject : "?", depth);
	else
		conn_fail(c, "client certificate refused: %s (subject %s)",
			  X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)),
			  subject ? subject : "?");
	c->failed = false; /* OpenSSL decides; feed() reports */
	free(subject);
	return ok;
}

/* Decodes the secret (last field) of a keylog line; returns its length. */
static size_t keylog_secret(const char *line, uint8_t *out, size_t max)
{
	const char *hex = strrchr(line, ' ');
	size_t n = 0;

	if (!hex || !OPENSSL_hexstr2buf_ex(out, max, &n, hex + 1, '\0')) {
		ERR_clear_error(); /* not the handshake's error */
		return 0;
	}
	return n;
}

/* Captures the TLS 1.3 application traffic secrets for kTLS. A server
 * (listener) sends with SERVER_* and receives with CLIENT_*; a bridge's
 * client side the other way round. OpenSSL wipes the line. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	static const char srv[] = "SERVER_TRAFFIC_SECRET_0 ";
	static const char cli[] = "CLIENT_TRAFFIC_SECRET_0 ";
	struct tls_conn *c = conn_of_ssl(ssl);
	bool server = SSL_is_server(ssl);
	const char *tx = server ? srv : cli, *rx = server ? cli : srv;

	_Static_assert(sizeof(srv) == sizeof(cli), "one prefix length");
	if (!c)
		return;
	if (!strncmp(line, tx, sizeof(srv) - 1)) {
		c->secret_tx_len = (uint8_t)keylog_secret(line, c->secret_tx,
							  sizeof(c->secret_tx));
		c->tx_app_keys = true;
	}
	else if (!strncmp(line, rx, sizeof(srv) - 1))
		c->secret_rx_len = (uint8_t)keylog_secret(line, c->secret_rx,
							  sizeof(c->secret_rx));
}

/* Counts records under the traffic keys (the kTLS sequence numbers) and
 * notes post-handshake messages (TLS 1.3 KeyUpdate moves the keys past
 * the _0 secrets we hold). Our TLS 1.3 application key is installed
 * right after our Finished went out, and the session ticket follows
 * under it before the handshake ends: sent records count from then. */
static void msg_cb(int write_p, int version, int content_type, const void *buf,
		   size_t len, SSL *ssl, void *arg)
{
	struct tls_conn *c = arg;

	if (!c->hs_done && !(write_p && c->tx_app_keys))
		return;
	if (content_type == SSL3_RT_HEADER && len >= TLS_RECORD_HEADER_LEN) {
		/* TLS 1.3 compatibility CCS records are not protected and
		 * take no sequence number. */
		if (((const uint8_t *)buf)[0] == SSL3_RT_CHANGE_CIPHER_SPEC)
			return;
		if (write_p)
			c->tx_records++;
		else
			c->rx_records++;
	} else if (content_type == SSL3_RT_HANDSHAKE && c->hs_done &&
		   !(!write_p && !SSL_is_server(ssl) && len &&
		     ((const uint8_t *)buf)[0] == SSL3_MT_NEWSESSION_TICKET)) {
		/* A session ticket for a bridge changes no key: its
		 * record is counted above and the handoff may go on. */
		c->post_hs_message = true;
	}
}

/* Encrypted private keys are not supported (Mosquitto has no listener
 * key password either); never let OpenSSL prompt on a terminal. */
static int no_password_cb(char *buf, int size, int rwflag, void *u)
{
	return 0;
}

/* ---- server ------------------------------------------------------------ */

static int server_versions(SSL_CTX *ctx, const char *v, char *err, size_t errlen)
{
	int min = TLS1_2_VERSION;

	if (!v || !strcmp(v, "tlsv1.2")) {
		min = TLS1_2_VERSION;
	} else if (!strcmp(v, "tlsv1.3")) {
		min = TLS1_3_VERSION;
	} else if (!strcmp(v, "tlsv1.1") || !strcmp(v, "tlsv1") ||
		   !strcmp(v, "tlsv1.0")) {
		errf(err, errlen, "tls_version %s: refused as insecure (use tlsv1.2 or tlsv1.3)", v);
		return -1;
	} else {
		errf(err, errlen, "tls_version %s: unknown (use tlsv1.2 or tlsv1.3)", v);
		return -1;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, min)) {
		errf(err, errlen, "tls_version %s: %s", v, ossl_reason());
		return -1;
	}
	return 0;
}

static int server_identity(SSL_CTX *ctx, const struct tls_listener_opts *o,
			   char *err, size_t errlen)
{
	if (!o->certfile || !o->keyfile) {
		errf(err, errlen, "%s: not set (a TLS listener needs certfile and keyfile)",
		     o->certfile ? "keyfile" : "certfile");
		return -1;
	}
	/* The whole chain (Let's Encrypt fullchain.pem): leaf first. */
	if (SSL_CTX_use_certificate_chain_file(ctx, o->certfile) != 1) {
		errf(err, errlen, "certfile %s: %s", o->certfile, ossl_reason());
		return -1;
	}
	/* A key of the certificate's type that is not its key fails here
	 * already (key values mismatch); another type fails the check. */
	if (SSL_CTX_use_PrivateKey_file(ctx, o->keyfile, SSL_FILETYPE_PEM) != 1 &&
	    ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH) {
		errf(err, errlen, "keyfile %s: %s", o->keyfile, ossl_reason());
		return -1;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		errf(err, errlen, "keyfile %s: does not match certfile %s",
		     o->keyfile, o->certfile);
		return -1;
	}
	return 0;
}

static int server_verify(SSL_CTX *ctx, const struct tls_listener_opts *o,
			 char *err, size_t errlen)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	X509_LOOKUP *lookup;
	unsigned long flags;

	if (o->cafile && SSL_CTX_load_verify_file(ctx, o->cafile) != 1) {
		errf(err, errlen, "cafile %s: %s", o->cafile, ossl_reason());
		return -1;
	}
	/* The directory is searched lazily at verification time. */
	errno = 0;
	if (o->capath && (access(o->capath, R_OK | X_OK) != 0 ||
			  SSL_CTX_load_verify_dir(ctx, o->capath) != 1)) {
		errf(err, errlen, "capath %s: %s", o->capath,
		     errno ? strerror(errno) : ossl_reason());
		return -1;
	}
	if (o->require_certificate && !o->cafile && !o->capath) {
		errf(err, errlen, "require_certificate: needs cafile or capath");
		return -1;
	}
	if (o->crlfile) {
		lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
		if (!lookup || X509_load_crl_file(lookup, o->crlfile, X509_FILETYPE_PEM) < 1) {
			errf(err, errlen, "crlfile %s: %s", o->crlfile, ossl_reason());
			return -1;
		}
		flags = X509_V_FLAG_CRL_CHECK;
		if (o->crl_check_all)
			flags |= X509_V_FLAG_CRL_CHECK_ALL;
		X509_STORE_set_flags(store, flags);
	}
	/* As Mosquitto: without require_certificate no certificate is asked. */
	SSL_CTX_set_verify(ctx, o->require_certificate ?
				SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT :
				SSL_VERIFY_NONE, verify_cb);
	return 0;
}

static int server_ciphers(SSL_CTX *ctx, const struct tls_listener_opts *o,
			  char *err, size_t errlen)
{
	BIO *bio;
	EVP_PKEY *dh = NULL;

	if (o->ciphers && SSL_CTX_set_cipher_list(ctx, o->ciphers) != 1) {
		errf(err, errlen, "ciphers %s: %s", o->ciphers, ossl_reason());
		return -1;
	}
	if (o->ciphers_tls13 && SSL_CTX_set_ciphersuites(ctx, o->ciphers_tls13) != 1) {
		errf(err, errlen, "ciphers_tls1.3 %s: %s", o->ciphers_tls13, ossl_reason());
		return -1;
	}
	/* OpenSSL's default puts TLS_AES_256_GCM_SHA384 first, and the
	 * server's order decides. Its key schedule runs on SHA-384, which
	 * no x86 or Arm CPU accelerates (SHA-256 has SHA-NI / the Armv8
	 * SHA extensions); the HKDF steps of a TLS 1.3 handshake are about a
	 * tenth of a resumed one. AES-128-GCM is TLS 1.3's mandatory suite
	 * and ~30% cheaper per record than AES-256. Same suites, AES-128
	 * first; ciphers_tls1.3 still decides when given. */
	if (!o->ciphers_tls13 &&
	    SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES_DEFAULT) != 1) {
		errf(err, errlen, "TLS 1.3 suites: %s", ossl_reason());
		return -1;
	}
	if (!o->dhparamfile)
		return 0;
	bio = BIO_new_file(o->dhparamfile, "r");
	if (bio) {
		dh = PEM_read_bio_Parameters(bio, NULL);
		BIO_free(bio);
	}
	if (!dh || !EVP_PKEY_is_a(dh, "DH")) {
		errf(err, errlen, "dhparamfile %s: %s", o->dhparamfile,
		     dh ? "not DH parameters" : ossl_reason());
		EVP_PKEY_free(dh);
		return -1;
	}
	if (SSL_CTX_set0_tmp_dh_pkey(ctx, dh) != 1) {
		errf(err, errlen, "dhparamfile %s: %s", o->dhparamfile, ossl_reason());
		EVP_PKEY_free(dh);
		return -1;
	}
	return 0;
}

/* ---- TLS-PSK ------------------------------------------------------------ */

static int psk_cmp(const void *a, const void *b)
{
	return strcmp(((const struct tls_psk *)a)->identity,
		      ((const struct tls_psk *)b)->identity);
}

static void psk_free(struct tls_psk *psk, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(psk[i].identity);
		OPENSSL_cleanse(psk[i].key, sizeof(psk[i].key));
	}
	free(psk);
}

/* A PSK in hex (psk_file entries, bridge_psk): 1 to PSK_MAX_PSK_LEN bytes. */
static bool hex_to_key(const char *hex, uint8_t *key, unsigned *len)
{
	size_t n = 0;
	if (!*hex || !OPENSSL_hexstr2buf_ex(key, PSK_MAX_PSK_LEN, &n, hex, '\0')) {
		ERR_clear_error(); /* reported as a bad line, not left queued */
		return false;
	}
	*len = (unsigned)n;
	return true;
}

/* One "identity:hexkey" line into e; false if malformed. */
static bool psk_parse_line(char *line, struct tls_psk *e)
{
	char *colon = strchr(line, ':');
	if (!colon || colon == line || colon - line > TLS_PSK_IDENTITY_MAX)
		return false;
	*colon = '\0';
	if (!hex_to_key(colon + 1, e->key, &e->key_len))
		return false;
	e->identity = strdup(line);
	return e->identity != NULL;
}

/* Reads psk_file into s->psk. Blank lines and '#' comments are skipped;
 * anything else must be "identity:hexkey". */
static int server_psk_load(struct tls_server *s, const char *path, char *err,
			   size_t errlen)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		errf(err, errlen, "psk_file %s: %s", path, strerror(errno));
		return -1;
	}
	char line[TLS_PSK_IDENTITY_MAX + 2 * PSK_MAX_PSK_LEN + 8];
	size_t cap = 0;
	int lineno = 0, rc = 0;
	while (rc == 0 && fgets(line, sizeof(line), f)) {
		lineno++;
		size_t n = strlen(line);
		if (n == sizeof(line) - 1 && line[n - 1] != '\n' && !feof(f)) {
			errf(err, errlen, "psk_file %s:%d: line too long", path, lineno);
			rc = -1;
			break;
		}
		while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' ||
			     line[n - 1] == ' ' || line[n - 1] == '\t'))
			line[--n] = '\0';
		if (n == 0 || line[0] == '#')
			continue;
		if (s->psk_count == TLS_PSK_ENTRIES_MAX) {
			errf(err, errlen, "psk_file %s: more than %d entries", path,
			     TLS_PSK_ENTRIES_MAX);
			rc = -1;
			break;
		}
		if (s->psk_count == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			struct tls_psk *g = realloc(s->psk, ncap * sizeof(*g));
			if (!g) {
				errf(err, errlen, "psk_file %s: out of memory", path);
				rc = -1;
				break;
			}
			s->psk = g;
			cap = ncap;
		}
		struct tls_psk *e = &s->psk[s->psk_count];
		if (!psk_parse_line(line, e)) {
			OPENSSL_cleanse(e->key, sizeof(e->key));
			errf(err, errlen, "psk_file %s:%d: expected identity:hexkey "
			     "(key of 1-%d bytes)", path, lineno, PSK_MAX_PSK_LEN);
			rc = -1;
			break;
		}
		s->psk_count++;
	}
	OPENSSL_cleanse(line, sizeof(line));
	fclose(f);
	if (rc == 0 && s->psk_count)
		qsort(s->psk, s->psk_count, sizeof(*s->psk), psk_cmp);
	return rc;
}

/* OpenSSL's server PSK callback, used for TLS 1.2 PSK suites and, with no
 * find-session callback set, for TLS 1.3 external PSKs. 0 = unknown
 * identity: the handshake fails. */
static unsigned int psk_server_cb(SSL *ssl, const char *identity,
				  unsigned char *psk, unsigned int max_len)
{
	struct tls_conn *c = conn_of_ssl(ssl);
	if (!c || !identity)
		return 0;
	struct tls_psk key = {.identity = (char *)identity};
	const struct tls_psk *e = bsearch(&key, c->srv->psk, c->srv->psk_count,
					  sizeof(key), psk_cmp);
	if (!e || e->key_len > max_len) {
		if (!c->error)
			conn_fail(c, "unknown PSK identity '%.64s'", identity);
		return 0;
	}
	free(c->identity);
	c->identity = strdup(identity);
	if (!c->identity)
		return 0;
	memcpy(psk, e->key, e->key_len);
	return e->key_len;
}

static int server_psk(struct tls_server *s, const struct tls_listener_opts *o,
		      char *err, size_t errlen)
{
	if (!o->psk_hint)
		return 0;
	if (!o->psk_file) {
		errf(err, errlen, "psk_hint needs a psk_file");
		return -1;
	}
	if (server_psk_load(s, o->psk_file, err, errlen) < 0)
		return -1;
	if (SSL_CTX_use_psk_identity_hint(s->ctx, o->psk_hint) != 1) {
		errf(err, errlen, "psk_hint %s: %s", o->psk_hint, ossl_reason());
		return -1;
	}
	SSL_CTX_set_psk_server_callback(s->ctx, psk_server_cb);
	/* Without `ciphers`, the default list has no PSK suites: add them
	 * (only them when there is no certificate to offer). */
	const char *list = o->ciphers ? o->ciphers
			   : o->certfile ? "DEFAULT:PSK" : "PSK";
	if (SSL_CTX_set_cipher_list(s->ctx, list) != 1) {
		errf(err, errlen, "ciphers %s: %s", list, ossl_reason());
		return -1;
	}
	return 0;
}

/* ---- client identity ---------------------------------------------------- */

/* Ticket app data: version, flags, then the identity's bytes. */
#define TICKET_APPDATA_V1 1
#define TICKET_APPDATA_HAS_ID 1

/* The client's identity, once: from its certificate after a full
 * handshake; from the ticket after a resumed one (tickets carry no
 * certificate, see ticket_cipher). As Mosquitto derives the username. */
static void conn_identity(struct tls_conn *c)
{
	if (c->identity_known || c->identity) /* or the PSK identity */
		return;
	c->identity_known = true;
	X509 *peer = SSL_get0_peer_certificate(c->ssl);
	if (peer) {
		const X509_NAME *name = X509_get_subject_name(peer);
		if (!c->srv->use_identity && c->srv->use_subject)
			c->identity = name_rfc2253(name);
		else
			c->identity = name_cn(name);
		return;
	}
	const uint8_t *d = NULL;
	size_t n = 0;
	if (!SSL_session_reused(c->ssl) ||
	    SSL_SESSION_get0_ticket_appdata(SSL_get0_session(c->ssl),
					    (void **)&d, &n) != 1 ||
	    n < 2 || d[0] != TICKET_APPDATA_V1 ||
	    !(d[1] & TICKET_APPDATA_HAS_ID))
		return;
	c->identity = strndup((const char *)d + 2, n - 2);
}

/* ---- session tickets ------------------------------------------------- */

/* A shard thread's keys for the last epochs it used, so a ticket costs
 * no key derivation in the common case. Keyed by the server's uid (never
 * reused, unlike an address). */
struct ticket_keys {
	uint64_t uid, epoch;
	uint8_t aes[32], mac[32];
};
static _Thread_local struct ticket_keys ticket_cache[2];
static atomic_uint_fast64_t server_uids;

static void put_be64(uint8_t *p, uint64_t v);

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* HMAC-SHA256(secret, label || epoch), one key per use and epoch. */
static int ticket_derive(const struct tls_server *s, const char *label,
			 uint64_t epoch, uint8_t out[32])
{
	uint8_t msg[32];
	size_t n = strlen(label), outlen = 0;

	assert(n + 8 <= sizeof(msg));
	memcpy(msg, label, n);
	put_be64(msg + n, epoch);
	return EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, s->ticket_secret,
			 sizeof(s->ticket_secret), msg, n + 8, out, 32,
			 &outlen) && outlen == 32 ? 0 : -1;
}

static const struct ticket_keys *ticket_keys(const struct tls_server *s,
					     uint64_t epoch)
{
	struct ticket_keys *k = &ticket_cache[epoch & 1];

	if (k->uid == s->uid && k->epoch == epoch)
		return k;
	k->uid = 0;
	if (ticket_derive(s, "kite ticket aes", epoch, k->aes) ||
	    ticket_derive(s, "kite ticket mac", epoch, k->mac))
		return NULL;
	k->uid = s->uid;
	k->epoch = epoch;
	return k;
}

/* The ticket's cipher: AES-256-CBC over the session's DER without the
 * client certificate. OpenSSL 3.0 puts the whole session, certificate
 * included, into a ticket and decodes it again twice per ticket issued
 * and once per ticket opened; decoding a certificate's public key goes
 * through the provider decoders and cost more than the rest of a resumed
 * handshake together. Nothing needs the certificate after the handshake
 * (it was verified, and the identity kite derives from it travels in the
 * ticket's app data), so the ticket leaves it out.
 *
 * OpenSSL 3.0 has no way to drop a session's peer certificate or to see
 * the DER it seals (the ticket callbacks see the SSL_SESSION before
 * encoding and after decoding; there is no setter for the peer), so the
 * certificate is dropped where the DER passes through: the cipher. The
 * cipher comes from a built-in provider (OSSL_PROVIDER_add_builtin, the
 * supported replacement for the deprecated EVP_CIPHER_meth_* API): its
 * encryption drops the SSL_SESSION's peer field ([3], OpenSSL's layout,
 * checked) and runs AES-256-CBC from the default provider; decryption is
 * plain AES-256-CBC. Authenticity is OpenSSL's HMAC over the ciphertext. */
#define TICKET_PROVIDER "kite-ticket"
#define TICKET_CIPHER_NAME "KITE-TICKET-AES-256-CBC"

struct ticket_cipher_ctx {
	EVP_CIPHER_CTX *aes;
	int enc;
	/* Sealing: the last block, given out by the final call (OpenSSL's
	 * ticket code cannot take an empty final: a zero-length WPACKET
	 * allocation fails). */
	uint8_t tail[16];
};

static EVP_CIPHER *ticket_aes;     /* fetched once */
static EVP_CIPHER *ticket_cipher;  /* the provider's; NULL: plain ticket_aes */
static pthread_once_t ticket_cipher_once = PTHREAD_ONCE_INIT;

/* DER length at p (after the tag byte); 0 if malformed. */
static size_t der_len(const uint8_t *p, size_t avail, size_t *hdr)
{
	if (avail < 1)
		return 0;
	if (p[0] < 0x80) {
		*hdr = 1;
		return p[0];
	}
	size_t k = p[0] & 0x7f, n = 0;
	if (k == 0 || k > 3 || avail < 1 + k)
		return 0;
	for (size_t i = 1; i <= k; i++)
		n = n << 8 | p[i];
	*hdr = 1 + k;
	return n;
}

/* Copies the SSL_SESSION DER in to out (room for len + 4, not
 * overlapping) without its [3] peer certificate; returns the new length,
 * or 0 to keep the DER as it is. */
static size_t session_der_strip_peer(const uint8_t *in, size_t len, uint8_t *out)
{
	size_t hdr, body;
	if (len < 2 || in[0] != 0x30 ||
	    !(body = der_len(in + 1, len - 1, &hdr)) || 1 + hdr + body != len)
		return 0;
	const uint8_t *p = in + 1 + hdr, *end = in + len;
	uint8_t *w = out + 4; /* room for the longest header we write */
	bool found = false;
	while (p < end) {
		size_t h, n = der_len(p + 1, (size_t)(end - p) - 1, &h);
		if ((n == 0 && (p + 1 >= end || p[1] != 0)) || n > (size_t)(end - p) - 1 - h)
			return 0;
		if (n == 0)
			h = 1;
		size_t tlv = 1 + h + n;
		if (p[0] == 0xa3)
			found = true;
		else {
			memcpy(w, p, tlv);
			w += tlv;
		}
		p += tlv;
	}
	if (!found)
		return 0;
	size_t nb = (size_t)(w - (out + 4));
	uint8_t head[4];
	size_t hl = 0;
	head[hl++] = 0x30;
	if (nb < 0x80) {
		head[hl++] = (uint8_t)nb;
	} else if (nb < 0x100) {
		head[hl++] = 0x81;
		head[hl++] = (uint8_t)nb;
	} else {
		head[hl++] = 0x82;
		head[hl++] = (uint8_t)(nb >> 8);
		head[hl++] = (uint8_t)nb;
	}
	memmove(out + hl, out + 4, nb);
	memcpy(out, head, hl);
	return hl + nb;
}

static void *tc_newctx(void *provctx)
{
	(void)provctx;
	struct ticket_cipher_ctx *t = calloc(1, sizeof(*t));
	if (t && !(t->aes = EVP_CIPHER_CTX_new())) {
		free(t);
		t = NULL;
	}
	return t;
}

static void tc_freectx(void *vctx)
{
	struct ticket_cipher_ctx *t = vctx;
	if (t)
		EVP_CIPHER_CTX_free(t->aes);
	free(t);
}

static int tc_init(struct ticket_cipher_ctx *t, const unsigned char *key,
		   size_t keylen, const unsigned char *iv, size_t ivlen, int enc)
{
	if ((key && keylen != 32) || (iv && ivlen != 16))
		return 0;
	t->enc = enc;
	return EVP_CipherInit_ex(t->aes, ticket_aes, NULL, key, iv, enc) == 1;
}

static int tc_einit(void *vctx, const unsigned char *key, size_t keylen,
		    const unsigned char *iv, size_t ivlen, const OSSL_PARAM params[])
{
	(void)params;
	return tc_init(vctx, key, keylen, iv, ivlen, 1);
}

static int tc_dinit(void *vctx, const unsigned char *key, size_t keylen,
		    const unsigned char *iv, size_t ivlen, const OSSL_PARAM params[])
{
	(void)params;
	return tc_init(vctx, key, keylen, iv, ivlen, 0);
}

/* OpenSSL's ticket code passes the whole session in one update (then a
 * final): sealing strips and encrypts it all, padding included, here,
 * into out (room for len + the block size, as EVP promises), and keeps
 * the last block for the final. */
static int tc_update(void *vctx, unsigned char *out, size_t *outl,
		     size_t outsize, const unsigned char *in, size_t len)
{
	struct ticket_cipher_ctx *t = vctx;
	int n = 0, fin = 0;
	if (len > INT_MAX - 32 || outsize < len + 16)
		return 0;
	if (!t->enc) {
		if (EVP_DecryptUpdate(t->aes, out, &n, in, (int)len) != 1)
			return 0;
		*outl = (size_t)n;
		return 1;
	}
	/* The stripped DER is written to out and encrypted in place. */
	size_t ln = out + len + 4 <= in || in + len <= out
			    ? session_der_strip_peer(in, len, out) : 0;
	const uint8_t *src = ln ? out : in;
	if (EVP_EncryptUpdate(t->aes, out, &n, src, (int)(ln ? ln : len)) != 1 ||
	    EVP_EncryptFinal_ex(t->aes, out + n, &fin) != 1 ||
	    n + fin < (int)sizeof(t->tail)) /* CBC padding: a block at least */
		return 0;
	*outl = (size_t)(n + fin) - sizeof(t->tail);
	memcpy(t->tail, out + *outl, sizeof(t->tail));
	return 1;
}

static int tc_final(void *vctx, unsigned char *out, size_t *outl, size_t outsize)
{
	struct ticket_cipher_ctx *t = vctx;
	int n = 0;
	*outl = 0;
	if (outsize < sizeof(t->tail))
		return 0;
	if (t->enc) {
		memcpy(out, t->tail, sizeof(t->tail));
		*outl = sizeof(t->tail);
		return 1;
	}
	if (EVP_DecryptFinal_ex(t->aes, out, &n) != 1)
		return 0;
	*outl = (size_t)n;
	return 1;
}

static int tc_get_params(OSSL_PARAM params[])
{
	OSSL_PARAM *p;
	if (((p = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_MODE)) &&
	     !OSSL_PARAM_set_uint(p, EVP_CIPH_CBC_MODE)) ||
	    ((p = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_KEYLEN)) &&
	     !OSSL_PARAM_set_size_t(p, 32)) ||
	    ((p = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_IVLEN)) &&
	     !OSSL_PARAM_set_size_t(p, 16)) ||
	    ((p = OSSL_PARAM_locate(params, OSSL_CIPHER_PARAM_BLOCK_SIZE)) &&
	     !OSSL_PARAM_set_size_t(p, 16)))
		return 0;
	return 1;
}

static int tc_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
	(void)vctx;
	return tc_get_params(params);
}

static const OSSL_PARAM *tc_gettable(void *provctx)
{
	static const OSSL_PARAM p[] = {
		OSSL_PARAM_uint(OSSL_CIPHER_PARAM_MODE, NULL),
		OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_KEYLEN, NULL),
		OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_IVLEN, NULL),
		OSSL_PARAM_size_t(OSSL_CIPHER_PARAM_BLOCK_SIZE, NULL),
		OSSL_PARAM_END,
	};
	(void)provctx;
	return p;
}

static const OSSL_PARAM *tc_gettable_ctx(void *vctx, void *provctx)
{
	(void)vctx;
	return tc_gettable(provctx);
}

/* Function pointers of other types, as OSSL_DISPATCH requires. */
#define TC_FN(f) ((void (*)(void))(f))
static const OSSL_DISPATCH ticket_cipher_fns[] = {
	{OSSL_FUNC_CIPHER_NEWCTX, TC_FN(tc_newctx)},
	{OSSL_FUNC_CIPHER_FREECTX, TC_FN(tc_freectx)},
	{OSSL_FUNC_CIPHER_ENCRYPT_INIT, TC_FN(tc_einit)},
	{OSSL_FUNC_CIPHER_DECRYPT_INIT, TC_FN(tc_dinit)},
	{OSSL_FUNC_CIPHER_UPDATE, TC_FN(tc_update)},
	{OSSL_FUNC_CIPHER_FINAL, TC_FN(tc_final)},
	{OSSL_FUNC_CIPHER_GET_PARAMS, TC_FN(tc_get_params)},
	{OSSL_FUNC_CIPHER_GET_CTX_PARAMS, TC_FN(tc_get_ctx_params)},
	{OSSL_FUNC_CIPHER_GETTABLE_PARAMS, TC_FN(tc_gettable)},
	{OSSL_FUNC_CIPHER_GETTABLE_CTX_PARAMS, TC_FN(tc_gettable_ctx)},
	{0, NULL},
};

static const OSSL_ALGORITHM ticket_provider_ciphers[] = {
	{TICKET_CIPHER_NAME, "provider=" TICKET_PROVIDER, ticket_cipher_fns,
	 "AES-256-CBC over an SSL_SESSION without its peer certificate"},
	{NULL, NULL, NULL, NULL},
};

static const OSSL_ALGORITHM *ticket_provider_query(void *provctx, int op,
						   int *no_cache)
{
	(void)provctx;
	*no_cache = 0;
	return op == OSSL_OP_CIPHER ? ticket_provider_ciphers : NULL;
}

static const OSSL_DISPATCH ticket_provider_fns[] = {
	{OSSL_FUNC_PROVIDER_QUERY_OPERATION, TC_FN(ticket_provider_query)},
	{0, NULL},
};

static int ticket_provider_init(const OSSL_CORE_HANDLE *handle,
				const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
				void **provctx)
{
	(void)in;
	*out = ticket_provider_fns;
	*provctx = (void *)handle;
	return 1;
}

/* Without the provider tickets carry the certificate (correct, only
 * slower to open). retain_fallbacks: loading a provider must not stop
 * the default one from loading. */
static void ticket_cipher_make(void)
{
	ticket_aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
	if (!ticket_aes ||
	    OSSL_PROVIDER_add_builtin(NULL, TICKET_PROVIDER, ticket_provider_init) != 1 ||
	    !OSSL_PROVIDER_try_load(NULL, TICKET_PROVIDER, 1))
		return;
	ticket_cipher = EVP_CIPHER_fetch(NULL, TICKET_CIPHER_NAME,
					 "provider=" TICKET_PROVIDER);
	ERR_clear_error();
}

/* Before each ticket is sealed: the identity goes into its app data. */
static int ticket_gen_cb(SSL *ssl, void *arg)
{
	struct tls_conn *c = conn_of_ssl(ssl);
	if (!c || !c->srv)
		return 1;
	conn_identity(c);
	size_t n = c->identity ? strlen(c->identity) : 0;
	uint8_t *d = malloc(2 + n);
	if (!d)
		return 0;
	d[0] = TICKET_APPDATA_V1;
	d[1] = c->identity ? TICKET_APPDATA_HAS_ID : 0;
	memcpy(d + 2, c->identity ? c->identity : "", n);
	int ok = SSL_SESSION_set1_ticket_appdata(SSL_get0_session(ssl), d, 2 + n);
	free(d);
	return ok == 1;
}

static SSL_TICKET_RETURN ticket_dec_cb(SSL *ssl, SSL_SESSION *ss,
				       const unsigned char *keyname,
				       size_t keyname_len,
				       SSL_TICKET_STATUS status, void *arg)
{
	switch (status) {
	case SSL_TICKET_SUCCESS:
		return SSL_TICKET_RETURN_USE;
	case SSL_TICKET_SUCCESS_RENEW:
		return SSL_TICKET_RETURN_USE_RENEW;
	case SSL_TICKET_EMPTY:
	case SSL_TICKET_NO_DECRYPT:
		return SSL_TICKET_RETURN_IGNORE_RENEW;
	default: /* SSL_TICKET_FATAL_ERR_* */
		return SSL_TICKET_RETURN_ABORT;
	}
}

/* OpenSSL's ticket key callback: enc 1 seals a new ticket under the
 * current epoch's keys; enc 0 opens one of this epoch (1) or of the
 * previous one (2: "and issue a fresh ticket", so a client that comes
 * back at least once an epoch always holds a valid ticket); 0 (full
 * handshake) if unknown or expired; -1 on an internal error. A ticket of
 * this epoch is not renewed: a new ticket costs OpenSSL 3.0 a decode of
 * the whole session, client certificate included (about as much as the
 * rest of a resumed handshake), and a device reconnecting after an
 * outage may offer its ticket again. */
static int ticket_key_cb(SSL *ssl, unsigned char key_name[16],
			 unsigned char iv[EVP_MAX_IV_LENGTH],
			 EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc)
{
	_Static_assert(TLS_TICKET_ID_LEN + 8 == 16, "ticket key name layout");
	const struct tls_conn *c = conn_of_ssl(ssl);
	const struct tls_server *s = c ? c->srv : NULL;
	uint64_t now = (uint64_t)time(NULL) / TLS_TICKET_EPOCH_S, epoch = now;

	if (!s)
		return -1;
	if (enc) {
		memcpy(key_name, s->ticket_id, TLS_TICKET_ID_LEN);
		put_be64(key_name + TLS_TICKET_ID_LEN, epoch);
		if (RAND_bytes(iv, 16) != 1)
			return -1;
	} else {
		epoch = get_be64(key_name + TLS_TICKET_ID_LEN);
		if (memcmp(key_name, s->ticket_id, TLS_TICKET_ID_LEN) ||
		    (epoch != now && epoch + 1 != now))
			return 0;
	}
	int rc = enc || epoch == now ? 1 : 2;
	const struct ticket_keys *k = ticket_keys(s, epoch);
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
						  k ? (void *)k->mac : NULL, 32),
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
						 (char *)"SHA256", 0),
		OSSL_PARAM_construct_end(),
	};
	if (!k || EVP_MAC_CTX_set_params(hctx, params) != 1 ||
	    EVP_CipherInit_ex(ectx, ticket_cipher ? ticket_cipher : ticket_aes,
			      NULL, k->aes, iv, enc) != 1)
		return -1;
	return rc;
}

/* Stateless tickets, one per handshake (a client resumes with the
 * newest); off for PSK listeners, whose identity comes from the PSK
 * callback that a resumed handshake skips. */
static int server_tickets(struct tls_server *s, const struct tls_listener_opts *o,
			  char *err, size_t errlen)
{
	if (o->psk_hint) {
		SSL_CTX_set_options(s->ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_num_tickets(s->ctx, 0);
		return 0;
	}
	if (RAND_bytes(s->ticket_secret, sizeof(s->ticket_secret)) != 1 ||
	    RAND_bytes(s->ticket_id, sizeof(s->ticket_id)) != 1) {
		errf(err, errlen, "TLS: no randomness for session tickets: %s",
		     ossl_reason());
		return -1;
	}
	pthread_once(&ticket_cipher_once, ticket_cipher_make);
	if (!ticket_aes) {
		errf(err, errlen, "TLS: no AES-256-CBC for session tickets: %s",
		     ossl_reason());
		return -1;
	}
	s->uid = atomic_fetch_add(&server_uids, 1) + 1;
	SSL_CTX_clear_options(s->ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(s->ctx, 1);
	SSL_CTX_set_timeout(s->ctx, TLS_TICKET_LIFETIME_S);
	if (SSL_CTX_set_tlsext_ticket_key_evp_cb(s->ctx, ticket_key_cb) != 1 ||
	    SSL_CTX_set_session_ticket_cb(s->ctx, ticket_gen_cb, ticket_dec_cb,
					  NULL) != 1) {
		errf(err, errlen, "TLS: session ticket callback: %s", ossl_reason());
		return -1;
	}
	return 0;
}

struct tls_server *tls_server_new(const struct tls_listener_opts *o,
				  char *err, size_t errlen)
{
	static const unsigned char sid_ctx[] = "kite";
	struct tls_server *s;
	SSL_CTX *ctx;

	assert(o);
	ERR_clear_error();
	pthread_once(&bio_method_once, bio_method_init);
	if (!bio_method) {
		errf(err, errlen, "TLS: cannot create the BIO method");
		return NULL;
	}
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		errf(err, errlen, "TLS: SSL_CTX_new: %s", ossl_reason());
		return NULL;
	}
	SSL_CTX_set_default_passwd_cb(ctx, no_password_cb);
	/* No renegotiation; the server picks the cipher. Tickets:
	 * server_tickets. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
				 SSL_OP_CIPHER_SERVER_PREFERENCE |
				 SSL_OP_NO_COMPRESSION);
	/* Idle connections give their 16 KiB read/write buffers back. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* No server-side session cache (tickets carry the session): a
	 * cache would keep each session and its client certificate for
	 * hours after the connection moved to kTLS (or closed). The id
	 * context still has to be set whenever client certificates are
	 * verified. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
	if (server_versions(ctx, o->tls_version, err, errlen) ||
	    ((o->certfile || !o->psk_hint) && server_identity(ctx, o, err, errlen)) ||
	    server_verify(ctx, o, err, errlen) ||
	    server_ciphers(ctx, o, err, errlen))
		goto free_ctx;
	s = calloc(1, sizeof(*s));
	if (!s) {
		errf(err, errlen, "TLS: out of memory");
		goto free_ctx;
	}
	s->ctx = ctx;
	if (server_psk(s, o, err, errlen) < 0 ||
	    server_tickets(s, o, err, errlen) < 0) {
		psk_free(s->psk, s->psk_count);
		OPENSSL_cleanse(s->ticket_secret, sizeof(s->ticket_secret));
		free(s);
		goto free_ctx;
	}
	atomic_init(&s->refs, 1);
	s->use_identity = o->use_identity_as_username;
	s->use_subject = o->use_subject_as_username;
	ERR_clear_error();
	return s;

free_ctx:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}

void tls_server_ref(struct tls_server *s)
{
	int old = atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);

	assert(old > 0);
	(void)old;
}

void tls_server_unref(struct tls_server *s)
{
	if (!s)
		return;
	int old = atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel);

	assert(old > 0);
	if (old == 1) {
		SSL_CTX_free(s->ctx);
		psk_free(s->psk, s->psk_count);
		OPENSSL_cleanse(s->ticket_secret, sizeof(s->ticket_secret));
		free(s);
	}
}

/* ---- connection ----------------------------------------------------- */

/* A connection's SSL on ctx, over kite's memory BIO; the side (accept
 * or connect) is the caller's. */
static struct tls_conn *tls_conn_alloc(SSL_CTX *ctx)
{
	struct tls_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->ssl = SSL_new(ctx);
	BIO *bio = BIO_new(bio_method);
	if (!c->ssl || !bio) {
		BIO_free(bio);
		SSL_free(c->ssl);
		free(c);
		ERR_clear_error();
		return NULL;
	}
	BIO_set_data(bio, c);
	SSL_set_bio(c->ssl, bio, bio); /* one reference, owned by ssl */
	SSL_set_app_data(c->ssl, c);
	return c;
}

struct tls_conn *tls_conn_new(struct tls_server *srv)
{
	assert(srv);
	struct tls_conn *c = tls_conn_alloc(srv->ctx);
	if (!c)
		return NULL;
	SSL_set_msg_callback(c->ssl, msg_cb);
	SSL_set_msg_callback_arg(c->ssl, c);
	SSL_set_accept_state(c->ssl);
	tls_server_ref(srv);
	c->srv = srv;
	return c;
}

void tls_conn_free(struct tls_conn *c)
{
	if (!c)
		return;
	SSL_free(c->ssl);
	tls_rec_free(c->rec);
	free(c->part);
	OPENSSL_cleanse(c->secret_tx, sizeof(c->secret_tx));
	OPENSSL_cleanse(c->secret_rx, sizeof(c->secret_rx));
	tls_server_unref(c->srv);
	free(c->out);
	free(c->identity);
	free(c->error);
	free(c);
}

static void conn_handshake_done(struct tls_conn *c)
{
	c->hs_done = true;
	if (c->srv) /* a bridge's client side keeps no identity */
		conn_identity(c);
}

/* Explains a failed SSL call; the verify callback may already have. */
static void conn_fail_ssl(struct tls_conn *c, int ssl_err)
{
	unsigned long e = ERR_peek_error();

	if (c->error) {
		c->failed = true;
		return;
	}
	if (ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
		conn_fail(c, "client sent no certificate (require_certificate is true)");
	else if (!c->hs_done)
		conn_fail(c, "TLS handshake failed: %s", e ? ossl_reason() : "protocol error");
	else
		conn_fail(c, "TLS error: %s", e ? ossl_reason() : "protocol error");
	(void)ssl_err;
}

/* Reads every decryptable record into plain. */
static int conn_read_all(struct tls_conn *c, struct tls_buf *plain, int rc)
{
	for (;;) {
		size_t n = 0;
		int r, e;

		if (plain->cap - plain->len < TLS_PLAIN_GROW_MIN / 2) {
			size_t cap = plain->cap * 2;
			uint8_t *p;

			if (cap < plain->len + TLS_PLAIN_GROW_MIN)
				cap = plain->len + TLS_PLAIN_GROW_MIN;
			p = realloc(plain->data, cap);
			if (!p) {
				conn_fail(c, "TLS: out of memory");
				return TLS_ERROR;
			}
			plain->data = p;
			plain->cap = cap;
		}
		r = SSL_read_ex(c->ssl, plain->data + plain->len,
				plain->cap - plain->len, &n);
		if (r == 1) {
			plain->len += n;
			if (rc == TLS_WANT_MORE)
				rc = TLS_OK;
			continue;
		}
		e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ)
			return rc;
		if (e == SSL_ERROR_ZERO_RETURN) {
			c->closed = true;
			return TLS_CLOSED;
		}
		conn_fail_ssl(c, e);
		return TLS_ERROR;
	}
}

static size_t rec_total(const uint8_t *h);

/* How many of n bytes are whole records; n when they cannot be records
 * (OpenSSL then says what is wrong). */
static size_t whole_records(const uint8_t *p, size_t n)
{
	size_t off = 0;
	while (n - off >= TLS_REC_HEADER) {
		size_t t = rec_total(p + off);
		if (!t)
			return n;
		if (t > n - off)
			break;
		off += t;
	}
	return off;
}

static int conn_feed(struct tls_conn *c, struct tls_buf *plain)
{
	int rc = TLS_WANT_MORE, r, e;

	if (!c->hs_done) {
		r = SSL_do_handshake(c->ssl);
		if (r != 1) {
			e = SSL_get_error(c->ssl, r);
			if (e == SSL_ERROR_WANT_READ)
				return TLS_WANT_MORE;
			conn_fail_ssl(c, e);
			return TLS_ERROR;
		}
		conn_handshake_done(c);
		rc = TLS_HANDSHAKE_DONE;
	}
	/* After the handshake OpenSSL gets whole records only; the rest
	 * waits in part for the next feed. A record OpenSSL had begun would
	 * be lost when the records move out of it (tls_conn_shed, kTLS):
	 * once it has taken a record's header and none of its body,
	 * SSL_has_pending says nothing is buffered. */
	size_t whole = whole_records(c->in, c->in_len);
	const uint8_t *tail = c->in + whole;
	size_t tail_len = c->in_len - whole;
	c->in_len = whole;
	rc = conn_read_all(c, plain, rc);
	if (tail_len && rc != TLS_ERROR && rc != TLS_CLOSED) {
		assert(!c->part_len);
		if (!(c->part = malloc(tail_len))) {
			conn_fail(c, "TLS: out of memory");
			return TLS_ERROR;
		}
		memcpy(c->part, tail, tail_len);
		c->part_len = tail_len;
	}
	return rc;
}

/* ---- records without OpenSSL (after tls_conn_shed) ------------------- */

static int conn_export(struct tls_conn *c, struct tls_ktls_keys *out,
		       unsigned flags, bool keep_out);

static int rec_seal_out(struct tls_conn *c, uint8_t type, const uint8_t *p,
			size_t n)
{
	if (out_reserve(c, n + TLS_REC_OVERHEAD)) {
		conn_fail(c, "TLS: out of memory");
		return -1;
	}
	size_t w = tls_rec_seal(c->rec, type, p, n, c->out + c->out_len);
	if (!w) {
		conn_fail(c, "TLS: cannot seal a record");
		return -1;
	}
	c->out_len += w;
	return 0;
}

/* A fatal alert, best effort, and the reason. */
static int rec_fail(struct tls_conn *c, uint8_t alert, const char *why)
{
	const uint8_t a[2] = {2, alert};
	if (!c->failed && !c->close_sent)
		rec_seal_out(c, TLS_REC_ALERT, a, sizeof(a));
	conn_fail(c, "TLS error: %s", why);
	return TLS_ERROR;
}

/* A record that brought no application data; too many in a row end the
 * connection. */
static int rec_idle(struct tls_conn *c)
{
	if (++c->idle_records > TLS_IDLE_RECORDS_MAX)
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE,
				"too many records without data");
	return TLS_WANT_MORE;
}

static int rec_alert(struct tls_conn *c, const uint8_t *a, size_t n)
{
	if (n != 2)
		return rec_fail(c, SSL_AD_DECODE_ERROR, "malformed alert");
	if (a[0] != SSL3_AL_WARNING && a[0] != SSL3_AL_FATAL)
		return rec_fail(c, SSL_AD_ILLEGAL_PARAMETER, "alert of unknown level");
	if (a[1] == SSL_AD_CLOSE_NOTIFY) {
		c->closed = true;
		return TLS_CLOSED;
	}
	/* A warning user_canceled, and TLS 1.2 warnings, are not the end
	 * (RFC 8446 6.1, 6.2: in TLS 1.3 every other alert is); a fatal
	 * level always is. */
	if (a[0] == SSL3_AL_WARNING &&
	    (a[1] == SSL_AD_USER_CANCELLED || !tls_rec_is_tls13(c->rec)))
		return rec_idle(c);
	conn_fail(c, "TLS alert from the client: %s",
		  SSL_alert_desc_string_long(a[1]));
	return TLS_ERROR;
}

/* Handshake messages after the handshake: TLS 1.3 KeyUpdate (each in one
 * record, as every stack sends it); a TLS 1.2 renegotiation is declined
 * as OpenSSL does with SSL_OP_NO_RENEGOTIATION: a warning, no handshake
 * (and, counted as a record without data, not forever). */
static int rec_handshake(struct tls_conn *c, const uint8_t *m, size_t n)
{
	static const uint8_t no_reneg[2] = {SSL3_AL_WARNING, SSL_AD_NO_RENEGOTIATION};
	static const uint8_t key_update[5] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 0};

	if (!tls_rec_is_tls13(c->rec)) {
		if (rec_idle(c) != TLS_WANT_MORE)
			return TLS_ERROR;
		return rec_seal_out(c, TLS_REC_ALERT, no_reneg, 2) ? TLS_ERROR
								 : TLS_WANT_MORE;
	}
	/* One whole KeyUpdate: nothing else comes after the handshake (no
	 * post-handshake authentication was asked for); a message split
	 * across records, or followed by more in its record, is refused. A
	 * key change must end its record (RFC 8446 5.1): what followed it
	 * went under the old key. */
	if (!n) /* RFC 8446 5.1: no zero-length handshake fragments */
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE, "empty handshake record");
	size_t len = n >= 4 ? (size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3] : 0;
	if (n < 4 || len > n - 4)
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE,
				"handshake message split across records");
	if (m[0] != SSL3_MT_KEY_UPDATE || len != 1)
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE,
				"unexpected post-handshake message");
	if (n != 5)
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE,
				"key update not at the end of its record");
	if (m[4] > 1)
		return rec_fail(c, SSL_AD_ILLEGAL_PARAMETER,
				"key update with a bad request_update");
	/* Each costs us HKDF expansions and a key set-up for the client's
	 * 5 bytes: as with kTLS (and GnuTLS), more than 8 in any second
	 * end the connection. */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	if (!ratecap_admit(&c->key_updates, now_ms, 1000))
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE,
				"more than 8 key updates in a second");
	if (tls_rec_rekey(c->rec, TLS_KTLS_RX))
		return rec_fail(c, SSL_AD_INTERNAL_ERROR, "key update failed");
	/* update_requested: ours goes under the old key (none once our
	 * close_notify is out: nothing more will be sent). */
	if (m[4] == 1 && !c->close_sent &&
	    (rec_seal_out(c, TLS_REC_HANDSHAKE, key_update, sizeof(key_update)) ||
	     tls_rec_rekey(c->rec, TLS_KTLS_TX)))
		return rec_fail(c, SSL_AD_INTERNAL_ERROR, "key update failed");
	return TLS_WANT_MORE;
}

static int plain_reserve(struct tls_conn *c, struct tls_buf *plain, size_t n)
{
	if (plain->cap - plain->len >= n)
		return 0;
	size_t cap = plain->cap * 2;
	if (cap < plain->len + n)
		cap = plain->len + n;
	uint8_t *p = realloc(plain->data, cap);
	if (!p) {
		conn_fail(c, "TLS: out of memory");
		return -1;
	}
	plain->data = p;
	plain->cap = cap;
	return 0;
}

/* One whole record. */
static int rec_one(struct tls_conn *c, const uint8_t *r, size_t len,
		   struct tls_buf *plain, int rc)
{
	uint8_t type;
	if (plain_reserve(c, plain, len))
		return TLS_ERROR;
	uint8_t *pt = plain->data + plain->len;
	int n = tls_rec_open(c->rec, r, len, pt, &type);
	switch (-n) {
	case 0:
		break;
	case TLS_REC_AD_RECORD_OVERFLOW:
		return rec_fail(c, SSL_AD_RECORD_OVERFLOW, "record too long");
	case TLS_REC_AD_UNEXPECTED_MESSAGE:
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE,
				"unexpected record type or no content type");
	case TLS_REC_AD_INTERNAL_ERROR:
		return rec_fail(c, SSL_AD_INTERNAL_ERROR, "record sequence number exhausted");
	default:
		if (n < 0)
			return rec_fail(c, SSL_AD_BAD_RECORD_MAC,
					"decryption failed or bad record mac");
	}
	switch (type) {
	case TLS_REC_DATA:
		if (!n) { /* legal (traffic analysis padding), but not many */
			n = rec_idle(c);
			return n == TLS_WANT_MORE ? rc : n;
		}
		c->idle_records = 0;
		plain->len += (size_t)n;
		return rc == TLS_WANT_MORE ? TLS_OK : rc;
	case TLS_REC_ALERT:
		n = rec_alert(c, pt, (size_t)n);
		return n == TLS_WANT_MORE ? rc : n;
	case TLS_REC_HANDSHAKE:
		n = rec_handshake(c, pt, (size_t)n);
		return n == TLS_WANT_MORE ? rc : n;
	default:
		return rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE, "unexpected record type");
	}
}

/* A record's total length from its header; 0 if it cannot be one. */
static size_t rec_total(const uint8_t *h)
{
	size_t body = (size_t)h[3] << 8 | h[4];
	if (h[1] != 3 || body > TLS_REC_CIPHER_MAX)
		return 0;
	return TLS_REC_HEADER + body;
}

/* A header's verdict before its record is waited for (up to 16 KiB
 * buffered): its length, or 0 after failing the connection. TLS 1.3
 * records are all application data outside; TLS 1.2 has no
 * ChangeCipherSpec after the handshake (RFC 8446 5, RFC 5246 7.1). */
static size_t rec_header(struct tls_conn *c, const uint8_t *h)
{
	size_t total = rec_total(h);
	bool v13 = tls_rec_is_tls13(c->rec);
	if (v13 ? h[0] != TLS_REC_DATA
		: h[0] < TLS_REC_ALERT || h[0] > TLS_REC_DATA)
		rec_fail(c, SSL_AD_UNEXPECTED_MESSAGE, "unexpected record type");
	else if (!total)
		rec_fail(c, SSL_AD_RECORD_OVERFLOW, "record too long");
	else
		return total;
	return 0;
}

/* Keeps the unfinished record's bytes; part is sized to the record (or
 * the header, until it is known), and freed as soon as it is whole. */
static int rec_stash(struct tls_conn *c, const uint8_t *in, size_t n)
{
	size_t want = c->part_len + n < TLS_REC_HEADER ? TLS_REC_HEADER : 0;
	if (!want) {
		uint8_t h[TLS_REC_HEADER];
		size_t k = c->part_len < TLS_REC_HEADER ? c->part_len : TLS_REC_HEADER;
		if (k)
			memcpy(h, c->part, k);
		memcpy(h + k, in, TLS_REC_HEADER - k);
		if (!(want = rec_header(c, h)))
			return -1;
	}
	uint8_t *p = realloc(c->part, want);
	if (!p) {
		conn_fail(c, "TLS: out of memory");
		return -1;
	}
	c->part = p;
	memcpy(c->part + c->part_len, in, n);
	c->part_len += n;
	return 0;
}

static int rec_feed(struct tls_conn *c, const uint8_t *in, size_t len,
		    struct tls_buf *plain)
{
	int rc = TLS_WANT_MORE;
	while (len && (rc == TLS_WANT_MORE || rc == TLS_OK)) {
		if (c->part_len) {
			/* Complete the header, then the record. */
			size_t need = TLS_REC_HEADER;
			if (c->part_len >= TLS_REC_HEADER)
				need = rec_total(c->part);
			size_t take = need - c->part_len < len ? need - c->part_len : len;
			if (c->part_len < TLS_REC_HEADER && c->part_len + take == TLS_REC_HEADER) {
				if (rec_stash(c, in, take))
					return TLS_ERROR;
				in += take;
				len -= take;
				continue; /* now sized to the record */
			}
			if (rec_stash(c, in, take))
				return TLS_ERROR;
			in += take;
			len -= take;
			if (c->part_len < need)
				break;
			rc = rec_one(c, c->part, c->part_len, plain, rc);
			free(c->part);
			c->part = NULL;
			c->part_len = 0;
			continue;
		}
		size_t total = len >= TLS_REC_HEADER ? rec_header(c, in) : 0;
		if (len >= TLS_REC_HEADER && !total)
			return TLS_ERROR;
		if (len < TLS_REC_HEADER || len < total) {
			if (rec_stash(c, in, len))
				return TLS_ERROR;
			break;
		}
		rc = rec_one(c, in, total, plain, rc);
		in += total;
		len -= total;
	}
	return rc;
}

/* Moves the connection's records out of OpenSSL, when nothing is left in
 * OpenSSL's buffers; keys as the kTLS hand-off exports them. */
static void conn_shed_try(struct tls_conn *c)
{
	struct tls_ktls_keys k;

	if (!c->shed_wanted || c->rec || !c->srv || c->failed || c->closed ||
	    !c->hs_done)
		return;
	int r = conn_export(c, &k, TLS_KTLS_KEEP_SECRETS, true);
	if (r == TLS_KTLS_AGAIN)
		return; /* after the next feed */
	c->shed_wanted = false;
	if (r != TLS_KTLS_OK)
		return; /* a CBC suite, a key update already: OpenSSL stays */
	c->exported = false;
	struct tls_rec *rec = tls_rec_new(&k);
	tls_ktls_rekey_free(k.rekey); /* NULL if rec took it */
	tls_ktls_keys_wipe(&k);
	if (!rec) {
		/* The secrets are gone with the export: no kTLS either. */
		c->ktls_declined = true;
		return;
	}
	c->resumed = SSL_session_reused(c->ssl);
	c->version_str = SSL_get_version(c->ssl);
	c->cipher_str = SSL_get_cipher_name(c->ssl);
	SSL_free(c->ssl);
	c->ssl = NULL;
	c->rec = rec;
}

void tls_conn_shed(struct tls_conn *c)
{
	assert(c);
	c->shed_wanted = true;
	conn_shed_try(c);
}

int tls_conn_feed(struct tls_conn *c, const uint8_t *in, size_t len,
		  struct tls_buf *plain)
{
	int rc;

	assert(c && plain && (in || !len) && !c->exported);
	if (c->failed)
		return TLS_ERROR;
	if (c->closed)
		return TLS_CLOSED;
	if (c->rec)
		return rec_feed(c, in, len, plain);
	/* Every TLS connection opens with a handshake record (0x16); say
	 * so plainly rather than "wrong version number". */
	if (!c->seen_input && len) {
		c->seen_input = true;
		if (in[0] != SSL3_RT_HANDSHAKE) {
			conn_fail(c, "not a TLS handshake (first byte 0x%02x%s)", in[0],
				  in[0] == 0x10 ? ", plain MQTT CONNECT?" : "");
			return TLS_ERROR;
		}
	}
	uint8_t *joined = NULL;
	if (c->part_len) { /* the start of a record, from the last feed */
		if (!(joined = malloc(c->part_len + len))) {
			conn_fail(c, "TLS: out of memory");
			return TLS_ERROR;
		}
		memcpy(joined, c->part, c->part_len);
		if (len)
			memcpy(joined + c->part_len, in, len);
		len += c->part_len;
		in = joined;
		free(c->part);
		c->part = NULL;
		c->part_len = 0;
	}
	ERR_clear_error();
	c->in = in;
	c->in_len = len;
	rc = conn_feed(c, plain);
	/* OpenSSL stops reading only when the BIO runs dry, at close_notify
	 * or on an error. */
	assert(c->in_len == 0 || rc == TLS_CLOSED || rc == TLS_ERROR);
	c->in = NULL;
	c->in_len = 0;
	free(joined);
	ERR_clear_error();
	if (rc != TLS_ERROR && rc != TLS_CLOSED)
		conn_shed_try(c);
	return rc;
}

int tls_conn_write(struct tls_conn *c, const uint8_t *plain, size_t len)
{
	size_t n = 0;
	int r;

	assert(c && (plain || !len) && !c->exported);
	if (c->failed || !c->hs_done || c->closed || c->close_sent)
		return TLS_ERROR;
	if (!len)
		return TLS_OK;
	if (c->rec) {
		for (size_t off = 0; off < len; off += n) {
			n = len - off < TLS_REC_PLAIN_MAX ? len - off : TLS_REC_PLAIN_MAX;
			if (rec_seal_out(c, TLS_REC_DATA, plain + off, n))
				return TLS_ERROR;
		}
		return TLS_OK;
	}
	ERR_clear_error();
	r = SSL_write_ex(c->ssl, plain, len, &n);
	if (r != 1 || n != len) {
		conn_fail_ssl(c, SSL_get_error(c->ssl, r));
		ERR_clear_error();
		return TLS_ERROR;
	}
	return TLS_OK;
}

int tls_conn_writev(struct tls_conn *c, const struct iovec *iov, unsigned n,
		    uint8_t *scratch)
{
	size_t len = 0;
	for (unsigned i = 0; i < n; i++)
		len += iov[i].iov_len;
	assert(c && len <= TLS_REC_PLAIN_MAX && !c->exported);
	if (!c->rec) {
		size_t off = 0;
		for (unsigned i = 0; i < n; i++) {
			memcpy(scratch + off, iov[i].iov_base, iov[i].iov_len);
			off += iov[i].iov_len;
		}
		return tls_conn_write(c, scratch, len);
	}
	if (c->failed || c->closed || c->close_sent)
		return TLS_ERROR;
	if (!len)
		return TLS_OK;
	if (out_reserve(c, len + TLS_REC_OVERHEAD)) {
		conn_fail(c, "TLS: out of memory");
		return TLS_ERROR;
	}
	size_t w = tls_rec_sealv(c->rec, TLS_REC_DATA, iov, n, len, c->out + c->out_len);
	if (!w) {
		conn_fail(c, "TLS: cannot seal a record");
		return TLS_ERROR;
	}
	c->out_len += w;
	return TLS_OK;
}

int tls_conn_close_notify(struct tls_conn *c)
{
	int r;

	assert(c && !c->exported);
	if (c->failed || !c->hs_done)
		return TLS_ERROR;
	if (c->rec) {
		static const uint8_t close_notify[2] = {SSL3_AL_WARNING,
							SSL_AD_CLOSE_NOTIFY};
		if (c->close_sent)
			return TLS_OK;
		c->close_sent = true;
		return rec_seal_out(c, TLS_REC_ALERT, close_notify, 2) ? TLS_ERROR
									: TLS_OK;
	}
	ERR_clear_error();
	r = SSL_shutdown(c->ssl);
	ERR_clear_error();
	return r >= 0 ? TLS_OK : TLS_ERROR;
}

size_t tls_conn_pending_out(struct tls_conn *c, const uint8_t **p)
{
	assert(c && p);
	*p = c->out ? c->out + c->out_head : NULL; /* NULL + 0 is UB */
	return c->out_len - c->out_head;
}

uint8_t *tls_conn_take_out(struct tls_conn *c, size_t *off, size_t *len)
{
	assert(c && off && len);
	uint8_t *b = c->out;
	*off = c->out_head;
	*len = c->out_len - c->out_head;
	c->out = NULL;
	c->out_head = c->out_len = c->out_cap = 0;
	return b;
}

void tls_conn_consume_out(struct tls_conn *c, size_t n)
{
	assert(c && n <= c->out_len - c->out_head);
	c->out_head += n;
	if (c->out_head < c->out_len)
		return;
	c->out_head = c->out_len = 0;
	if (c->out_cap > TLS_OUT_KEEP_MAX) { /* idle connections stay small */
		free(c->out);
		c->out = NULL;
		c->out_cap = 0;
	}
}

bool tls_conn_handshake_done(const struct tls_conn *c)
{
	return c->hs_done;
}

bool tls_conn_resumed(const struct tls_conn *c)
{
	return c->rec ? c->resumed : c->hs_done && SSL_session_reused(c->ssl);
}

const char *tls_conn_error(const struct tls_conn *c)
{
	return c->failed ? c->error : NULL;
}

const char *tls_conn_identity(const struct tls_conn *c)
{
	return c->identity;
}

const char *tls_conn_version(const struct tls_conn *c)
{
	if (c->rec)
		return c->version_str;
	return c->hs_done ? SSL_get_version(c->ssl) : NULL;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
	if (c->rec)
		return c->cipher_str;
	return c->hs_done ? SSL_get_cipher_name(c->ssl) : NULL;
}

/* ---- kTLS key export ---------------------------------------------- */

struct ktls_material {
	uint8_t tx_key[32], rx_key[32];
	uint8_t tx_iv[12], rx_iv[12];
	size_t key_len, iv_len; /* iv_len: 4 (TLS 1.2 GCM) or 12 */
};

/* The two digests of the TLS 1.3 suites, fetched once: EVP_sha256() and
 * the digest OpenSSL names for a suite are not fetched, so every use
 * would fetch again (a locked lookup). */
static EVP_MD *hkdf_sha256, *hkdf_sha384;
static pthread_once_t hkdf_once = PTHREAD_ONCE_INIT;

static void hkdf_fetch(void)
{
	hkdf_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	hkdf_sha384 = EVP_MD_fetch(NULL, "SHA384", NULL);
}

/* HKDF-Expand-Label(secret, label, "", len), RFC 8446 7.1, for len up to
 * the hash's size: HKDF-Expand's first block, T(1) = HMAC(secret,
 * HkdfLabel || 0x01) (RFC 5869 2.3), with HMAC spelled out (RFC 2104)
 * over the fetched digest. Through EVP_KDF each call cost ~20,000
 * instructions (a digest fetch by name, an HMAC context built and freed);
 * four per connection moving out of OpenSSL. */
static int hkdf_expand_label(const EVP_MD *md, const uint8_t *secret,
			     size_t secret_len, const char *label,
			     uint8_t *out, size_t len)
{
	enum { BLOCK_MAX = 128 }; /* SHA-384's block */
	uint8_t info[2 + 1 + 255 + 1 + 1], pad[BLOCK_MAX], inner[EVP_MAX_MD_SIZE];
	size_t label_len = strlen(label), n = 0;
	unsigned inner_len = 0, out_len = 0;
	uint8_t t[EVP_MAX_MD_SIZE];

	pthread_once(&hkdf_once, hkdf_fetch);
	const EVP_MD *d = EVP_MD_get_type(md) == NID_sha384 ? hkdf_sha384 :
			  EVP_MD_get_type(md) == NID_sha256 ? hkdf_sha256 : NULL;
	size_t block = d ? (size_t)EVP_MD_get_block_size(d) : 0;
	if (!d || block > BLOCK_MAX || secret_len > block ||
	    len > (size_t)EVP_MD_get_size(d))
		return -1;
	assert(label_len + 6 <= 255);
	info[n++] = (uint8_t)(len >> 8);
	info[n++] = (uint8_t)len;
	info[n++] = (uint8_t)(6 + label_len);
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, label_len);
	n += label_len;
	info[n++] = 0; /* empty context */
	info[n++] = 1; /* HKDF-Expand's block counter */

	EVP_MD_CTX *x = EVP_MD_CTX_new();
	memset(pad, 0x36, block);
	for (size_t i = 0; i < secret_len; i++)
		pad[i] ^= secret[i];
	int ok = x && EVP_DigestInit_ex(x, d, NULL) == 1 &&
		 EVP_DigestUpdate(x, pad, block) == 1 &&
		 EVP_DigestUpdate(x, info, n) == 1 &&
		 EVP_DigestFinal_ex(x, inner, &inner_len) == 1;
	memset(pad, 0x5c, block);
	for (size_t i = 0; i < secret_len; i++)
		pad[i] ^= secret[i];
	ok = ok && EVP_DigestInit_ex(x, d, NULL) == 1 &&
	     EVP_DigestUpdate(x, pad, block) == 1 &&
	     EVP_DigestUpdate(x, inner, inner_len) == 1 &&
	     EVP_DigestFinal_ex(x, t, &out_len) == 1 && out_len >= len;
	if (ok)
		memcpy(out, t, len);
	EVP_MD_CTX_free(x);
	OPENSSL_cleanse(pad, sizeof(pad));
	OPENSSL_cleanse(inner, sizeof(inner));
	OPENSSL_cleanse(t, sizeof(t));
	return ok ? 0 : -1;
}

static int ktls_tls13(struct tls_conn *c, const EVP_MD *md, struct ktls_material *m)
{
	if (!c->secret_tx_len || c->secret_tx_len != c->secret_rx_len ||
	    c->secret_tx_len != EVP_MD_get_size(md))
		return -1;
	m->iv_len = 12;
	if (hkdf_expand_label(md, c->secret_tx, c->secret_tx_len, "key", m->tx_key, m->key_len) ||
	    hkdf_expand_label(md, c->secret_tx, c->secret_tx_len, "iv", m->tx_iv, m->iv_len) ||
	    hkdf_expand_label(md, c->secret_rx, c->secret_rx_len, "key", m->rx_key, m->key_len) ||
	    hkdf_expand_label(md, c->secret_rx, c->secret_rx_len, "iv", m->rx_iv, m->iv_len))
		return -1;
	return 0;
}

/* key_block = PRF(master, "key expansion", server_random + client_random);
 * AEAD ciphers have no MAC keys: client key, server key, client IV,
 * server IV (RFC 5288: 4-byte salt for GCM; RFC 7905: 12 for ChaCha). */
static int ktls_tls12(struct tls_conn *c, const EVP_MD *md, struct ktls_material *m,
		      bool chacha)
{
	uint8_t master[SSL_MAX_MASTER_KEY_LENGTH], seed[2 * SSL3_RANDOM_SIZE];
	uint8_t block[TLS_KEY_BLOCK_MAX];
	size_t master_len, block_len;
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	OSSL_PARAM params[5];
	int rc = -1;

	m->iv_len = chacha ? 12 : 4;
	block_len = 2 * m->key_len + 2 * m->iv_len;
	master_len = SSL_SESSION_get_master_key(SSL_get_session(c->ssl), master,
						sizeof(master));
	if (!kctx || !master_len ||
	    SSL_get_server_random(c->ssl, seed, SSL3_RANDOM_SIZE) != SSL3_RANDOM_SIZE ||
	    SSL_get_client_random(c->ssl, seed + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE) !=
		    SSL3_RANDOM_SIZE)
		goto out;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						     (char *)EVP_MD_get0_name(md), 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET,
						      master, master_len);
	params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED,
						      "key expansion", 13);
	params[3] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED,
						      seed, sizeof(seed));
	params[4] = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, block, block_len, params) != 1)
		goto out;
	/* A server sends with the server's half, a bridge's client side
	 * with the client's. */
	size_t tx_half = SSL_is_server(c->ssl) ? 1 : 0, rx_half = 1 - tx_half;
	memcpy(m->rx_key, block + rx_half * m->key_len, m->key_len);
	memcpy(m->tx_key, block + tx_half * m->key_len, m->key_len);
	memcpy(m->rx_iv, block + 2 * m->key_len + rx_half * m->iv_len, m->iv_len);
	memcpy(m->tx_iv, block + 2 * m->key_len + tx_half * m->iv_len, m->iv_len);
	rc = 0;
out:
	OPENSSL_cleanse(master, sizeof(master));
	OPENSSL_cleanse(block, sizeof(block));
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return rc;
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

/* Fills one direction's kernel struct; returns its size. */
static size_t ktls_fill(union tls_ktls_crypto_info *ci, uint16_t version,
			uint16_t cipher, const uint8_t *key, const uint8_t *iv,
			uint64_t seq)
{
	ci->info.version = version;
	ci->info.cipher_type = cipher;
	switch (cipher) {
	case TLS_CIPHER_AES_GCM_128: {
		struct tls12_crypto_info_aes_gcm_128 *g = &ci->aes_gcm_128;

		memcpy(g->key, key, sizeof(g->key));
		memcpy(g->salt, iv, sizeof(g->salt));
		put_be64(g->rec_seq, seq);
		/* TLS 1.3: the rest of the static IV (the kernel XORs in
		 * the sequence number); TLS 1.2: the first explicit nonce,
		 * which the kernel increments per record; the sequence
		 * number is a unique choice. */
		if (version == TLS_1_3_VERSION)
			memcpy(g->iv, iv + sizeof(g->salt), sizeof(g->iv));
		else
			put_be64(g->iv, seq);
		return sizeof(*g);
	}
	case TLS_CIPHER_AES_GCM_256: {
		struct tls12_crypto_info_aes_gcm_256 *g = &ci->aes_gcm_256;

		memcpy(g->key, key, sizeof(g->key));
		memcpy(g->salt, iv, sizeof(g->salt));
		put_be64(g->rec_seq, seq);
		if (version == TLS_1_3_VERSION)
			memcpy(g->iv, iv + sizeof(g->salt), sizeof(g->iv));
		else
			put_be64(g->iv, seq);
		return sizeof(*g);
	}
	default: {
		struct tls12_crypto_info_chacha20_poly1305 *g = &ci->chacha20_poly1305;

		assert(cipher == TLS_CIPHER_CHACHA20_POLY1305);
		memcpy(g->key, key, sizeof(g->key));
		memcpy(g->iv, iv, sizeof(g->iv));
		put_be64(g->rec_seq, seq);
		return sizeof(*g);
	}
	}
}

void tls_ktls_keys_wipe(struct tls_ktls_keys *k)
{
	if (!k)
		return;
	struct tls_ktls_rekey *keep = k->rekey;

	OPENSSL_cleanse(k, sizeof(*k));
	k->rekey = keep;
}

/* ---- key updates after the handoff --------------------------------- */

/* Sized to the suite's hash: 32 bytes per direction for the SHA-256
 * suites, 48 for AES-256-GCM-SHA384, so it stays a small allocation. */
struct tls_ktls_rekey {
	uint16_t cipher;     /* kernel TLS_CIPHER_* */
	uint8_t key_len;
	uint8_t secret_len;
	uint8_t secret[];    /* RX secret, then TX secret */
};

static struct tls_ktls_rekey *rekey_new(uint16_t cipher, size_t key_len,
					const uint8_t *rx, const uint8_t *tx,
					size_t secret_len)
{
	struct tls_ktls_rekey *r = malloc(sizeof(*r) + 2 * secret_len);

	if (!r)
		return NULL;
	r->cipher = cipher;
	r->key_len = (uint8_t)key_len;
	r->secret_len = (uint8_t)secret_len;
	memcpy(r->secret, rx, secret_len);
	memcpy(r->secret + secret_len, tx, secret_len);
	return r;
}

int tls_ktls_rekey_next(struct tls_ktls_rekey *r, enum tls_ktls_dir dir,
			union tls_ktls_crypto_info *ci, size_t *len)
{
	assert(r && ci && len);
	assert(r->secret_len == 32 || r->secret_len == 48);
	const EVP_MD *md = r->secret_len == 48 ? EVP_sha384() : EVP_sha256();
	uint8_t *secret = r->secret + (dir == TLS_KTLS_TX ? r->secret_len : 0);
	uint8_t next[TLS_SECRET_MAX], key[32], iv[12];
	int rc = -1;

	ERR_clear_error();
	if (hkdf_expand_label(md, secret, r->secret_len, "traffic upd", next,
			      r->secret_len) ||
	    hkdf_expand_label(md, next, r->secret_len, "key", key, r->key_len) ||
	    hkdf_expand_label(md, next, r->secret_len, "iv", iv, sizeof(iv)))
		goto wipe;
	*len = ktls_fill(ci, TLS_1_3_VERSION, r->cipher, key, iv, 0);
	memcpy(secret, next, r->secret_len);
	rc = 0;
wipe:
	OPENSSL_cleanse(next, sizeof(next));
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(iv, sizeof(iv));
	ERR_clear_error();
	return rc;
}

void tls_ktls_rekey_free(struct tls_ktls_rekey *r)
{
	if (!r)
		return;
	OPENSSL_cleanse(r->secret, 2u * r->secret_len);
	free(r);
}

/* Maps the negotiated cipher to the kernel's; 0 if the kernel has none. */
static uint16_t ktls_cipher(const SSL_CIPHER *ciph, size_t *key_len)
{
	switch (SSL_CIPHER_get_cipher_nid(ciph)) {
	case NID_aes_128_gcm:
		*key_len = 16;
		return TLS_CIPHER_AES_GCM_128;
	case NID_aes_256_gcm:
		*key_len = 32;
		return TLS_CIPHER_AES_GCM_256;
	case NID_chacha20_poly1305:
		*key_len = 32;
		return TLS_CIPHER_CHACHA20_POLY1305;
	default:
		return 0;
	}
}

int tls_conn_export_ktls(struct tls_conn *c, struct tls_ktls_keys *out,
			 unsigned flags)
{
	assert(c && out);
	if (c->rec) {
		memset(out, 0, sizeof(*out));
		return TLS_KTLS_UNSUPPORTED;
	}
	return conn_export(c, out, flags, false);
}

/* keep_out: pending output stays valid (shedding: it is ours, already
 * counted in tx_records), else it blocks the export (kTLS). */
static int conn_export(struct tls_conn *c, struct tls_ktls_keys *out,
		       unsigned flags, bool keep_out)
{
	const SSL_CIPHER *ciph;
	const EVP_MD *md;
	struct ktls_material m = {0};
	uint16_t cipher, version;
	uint64_t tx_seq, rx_seq;
	int rc = TLS_KTLS_UNSUPPORTED, r;

	assert(c && out && !c->exported);
	memset(out, 0, sizeof(*out));
	if (!c->hs_done || c->failed || c->closed || c->post_hs_message ||
	    c->ktls_declined)
		return TLS_KTLS_UNSUPPORTED;
	/* Bytes already taken off the socket but not yet a whole record
	 * cannot be handed to the kernel; unsent output would be lost. */
	if (SSL_has_pending(c->ssl) || (!keep_out && c->part_len) ||
	    (!keep_out && c->out_len != c->out_head))
		return TLS_KTLS_AGAIN;
	ciph = SSL_get_current_cipher(c->ssl);
	md = ciph ? SSL_CIPHER_get_handshake_digest(ciph) : NULL;
	cipher = ciph ? ktls_cipher(ciph, &m.key_len) : 0;
	if (!md || !cipher)
		return TLS_KTLS_UNSUPPORTED;
	ERR_clear_error();
	switch (SSL_version(c->ssl)) {
	case TLS1_3_VERSION:
		version = TLS_1_3_VERSION;
		tx_seq = c->tx_records;
		rx_seq = c->rx_records;
		r = ktls_tls13(c, md, &m);
		break;
	case TLS1_2_VERSION:
		/* Finished was record 0 under the new keys either way. */
		version = TLS_1_2_VERSION;
		tx_seq = 1 + c->tx_records;
		rx_seq = 1 + c->rx_records;
		r = ktls_tls12(c, md, &m, cipher == TLS_CIPHER_CHACHA20_POLY1305);
		break;
	default:
		r = -1;
		break;
	}
	if (r)
		goto wipe;
	out->version = version;
	out->cipher_type = cipher;
	out->tx_len = ktls_fill(&out->tx, version, cipher, m.tx_key, m.tx_iv, tx_seq);
	out->rx_len = ktls_fill(&out->rx, version, cipher, m.rx_key, m.rx_iv, rx_seq);
	if ((flags & TLS_KTLS_KEEP_SECRETS) && version == TLS_1_3_VERSION) {
		out->rekey = rekey_new(cipher, m.key_len, c->secret_rx,
				       c->secret_tx, c->secret_rx_len);
		if (!out->rekey)
			goto wipe;
	}
	c->exported = true;
	rc = TLS_KTLS_OK;
wipe:
	OPENSSL_cleanse(&m, sizeof(m));
	OPENSSL_cleanse(c->secret_tx, sizeof(c->secret_tx));
	OPENSSL_cleanse(c->secret_rx, sizeof(c->secret_rx));
	c->secret_tx_len = c->secret_rx_len = 0;
	if (rc != TLS_KTLS_OK)
		tls_ktls_keys_wipe(out);
	ERR_clear_error();
	return rc;
}

void tls_conn_ktls_declined(struct tls_conn *c)
{
	assert(c && c->exported);
	c->exported = false;
	c->ktls_declined = true;
}

enum tls_kernel_ktls tls_kernel_ktls_support(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int l, cl = -1, sv = -1;
	enum tls_kernel_ktls got = TLS_KERNEL_NO_ULP;

	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		return got;
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &alen))
		goto close_listener;
	cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cl < 0 || connect(cl, (struct sockaddr *)&a, sizeof(a)))
		goto close_client;
	sv = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (sv < 0)
		goto close_client;
	if (setsockopt(sv, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) == 0) {
		/* A second TLS 1.3 TX key is a key update: kernels before
		 * 6.14 refuse it with EBUSY. Nothing is sent on sv. */
		struct tls12_crypto_info_aes_gcm_128 k = {
			.info = {.version = TLS_1_3_VERSION,
				 .cipher_type = TLS_CIPHER_AES_GCM_128}};

		got = TLS_KERNEL_NO_REKEY;
		if (setsockopt(sv, SOL_TLS, TLS_TX, &k, sizeof(k)) == 0 &&
		    setsockopt(sv, SOL_TLS, TLS_TX, &k, sizeof(k)) == 0)
			got = TLS_KERNEL_REKEY;
	}
	close(sv);
close_client:
	if (cl >= 0)
		close(cl);
close_listener:
	close(l);
	return got;
}

/* ---- client side (bridges) ------------------------------------------------ */

struct tls_client {
	SSL_CTX *ctx;
	char *psk_identity;
	uint8_t psk[PSK_MAX_PSK_LEN];
	unsigned psk_len;
};

static int client_ex_index = -1;
static pthread_once_t client_ex_once = PTHREAD_ONCE_INIT;

static void client_ex_init(void)
{
	client_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static unsigned int psk_client_cb(SSL *ssl, const char *hint, char *identity,
				  unsigned int max_identity_len,
				  unsigned char *psk, unsigned int max_psk_len)
{
	(void)hint;
	const struct tls_client *cl =
		SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), client_ex_index);
	if (!cl || !cl->psk_identity || cl->psk_len > max_psk_len ||
	    strlen(cl->psk_identity) + 1 > max_identity_len)
		return 0;
	strcpy(identity, cl->psk_identity);
	memcpy(psk, cl->psk, cl->psk_len);
	return cl->psk_len;
}

/* bridge_require_ocsp: the stapled response must be signed for the
 * remote's certificate by its issuer (or a responder the trust store
 * vouches for) and say "good", within its validity. 1 accepts. */
static int ocsp_status_cb(SSL *ssl, void *arg)
{
	(void)arg;
	const unsigned char *p;
	long len = SSL_get_tlsext_status_ocsp_resp(ssl, &p);
	int ok = 0;
	OCSP_RESPONSE *resp = NULL;
	OCSP_BASICRESP *br = NULL;
	OCSP_CERTID *id = NULL;
	X509 *peer = SSL_get0_peer_certificate(ssl);
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	X509_STORE *store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
	if (len <= 0 || !p || !peer)
		goto out; /* none stapled */
	if (!(resp = d2i_OCSP_RESPONSE(NULL, &p, len)) ||
	    OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL ||
	    !(br = OCSP_response_get1_basic(resp)) ||
	    OCSP_basic_verify(br, chain, store, 0) != 1)
		goto out;
	/* The issuer: in the chain the remote sent, or in our store. */
	X509 *issuer = NULL;
	for (int i = 0; chain && i < sk_X509_num(chain) && !issuer; i++) {
		X509 *c = sk_X509_value(chain, i);
		if (X509_check_issued(c, peer) == X509_V_OK)
			issuer = c;
	}
	X509_STORE_CTX *sctx = NULL;
	X509 *found = NULL;
	if (!issuer && (sctx = X509_STORE_CTX_new()) &&
	    X509_STORE_CTX_init(sctx, store, peer, chain) == 1 &&
	    X509_STORE_CTX_get1_issuer(&found, sctx, peer) == 1)
		issuer = found;
	if (issuer)
		id = OCSP_cert_to_id(NULL, peer, issuer);
	X509_free(found);
	X509_STORE_CTX_free(sctx);
	int status, reason;
	ASN1_GENERALIZEDTIME *rev, *thisupd, *nextupd;
	if (id &&
	    OCSP_resp_find_status(br, id, &status, &reason, &rev, &thisupd,
				  &nextupd) == 1 &&
	    status == V_OCSP_CERTSTATUS_GOOD &&
	    OCSP_check_validity(thisupd, nextupd, 300, -1) == 1)
		ok = 1;
out:
	OCSP_CERTID_free(id);
	OCSP_BASICRESP_free(br);
	OCSP_RESPONSE_free(resp);
	return ok;
}


struct tls_client *tls_client_new(const struct tls_client_opts *o, char *err,
				  size_t errlen)
{
	assert(o);
	struct tls_client *cl = calloc(1, sizeof(*cl));
	pthread_once(&bio_method_once, bio_method_init);
	pthread_once(&client_ex_once, client_ex_init);
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	const char *cafile = o->cafile && *o->cafile ? o->cafile : NULL;
	const char *capath = o->capath && *o->capath ? o->capath : NULL;
	bool psk = o->psk_identity && *o->psk_identity;
	if (!cl || !ctx || !bio_method || client_ex_index < 0) {
		errf(err, errlen, "out of memory");
		goto fail;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (o->version && !strcmp(o->version, "tlsv1.3"))
		SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	else if (o->version && !strcmp(o->version, "tlsv1.2"))
		SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
	/* The TLS 1.3 traffic secrets, for the kernel TLS handoff. */
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
	if (psk) {
		/* As Mosquitto: PSK suites for TLS 1.2; TLS 1.3 takes the
		 * same key as an external PSK through this callback. No CA:
		 * a remote that refuses the PSK and offers a certificate
		 * fails verification. */
		if (!hex_to_key(o->psk_hex, cl->psk, &cl->psk_len) ||
		    !(cl->psk_identity = strdup(o->psk_identity))) {
			errf(err, errlen, "bad bridge_psk (hex digits) or out "
			     "of memory");
			goto fail;
		}
		if (SSL_CTX_set_cipher_list(ctx, "PSK") != 1) {
			errf(err, errlen, "no PSK cipher suites in this OpenSSL");
			goto fail;
		}
		SSL_CTX_set_ex_data(ctx, client_ex_index, cl);
		SSL_CTX_set_psk_client_callback(ctx, psk_client_cb);
	} else if (SSL_CTX_load_verify_locations(ctx, cafile, capath) != 1) {
		errf(err, errlen, "cannot load CA %s", cafile ? cafile : capath);
		goto fail;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (o->certfile && *o->certfile &&
	    (SSL_CTX_use_certificate_chain_file(ctx, o->certfile) != 1 ||
	     SSL_CTX_use_PrivateKey_file(ctx, o->keyfile, SSL_FILETYPE_PEM) != 1 ||
	     SSL_CTX_check_private_key(ctx) != 1)) {
		errf(err, errlen, "cannot load certificate %s / key %s",
		     o->certfile, o->keyfile);
		goto fail;
	}
	if (o->require_ocsp) {
		SSL_CTX_set_tlsext_status_type(ctx, TLSEXT_STATUSTYPE_ocsp);
		SSL_CTX_set_tlsext_status_cb(ctx, ocsp_status_cb);
	}
	if (o->alpn && *o->alpn) {
		uint8_t wire[65];
		size_t n = strlen(o->alpn);
		if (n > 63) {
			errf(err, errlen, "bridge_alpn too long");
			goto fail;
		}
		wire[0] = (uint8_t)n;
		memcpy(wire + 1, o->alpn, n);
		SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)n + 1);
	}
	cl->ctx = ctx;
	ERR_clear_error();
	return cl;
fail:
	SSL_CTX_free(ctx);
	if (cl) {
		free(cl->psk_identity);
		OPENSSL_cleanse(cl->psk, sizeof(cl->psk));
		free(cl);
	}
	ERR_clear_error();
	return NULL;
}

void tls_client_free(struct tls_client *cl)
{
	if (!cl)
		return;
	SSL_CTX_free(cl->ctx); /* live SSL objects hold their own reference */
	free(cl->psk_identity);
	OPENSSL_cleanse(cl->psk, sizeof(cl->psk));
	free(cl);
}

struct tls_conn *tls_client_conn_new(struct tls_client *cl, const char *host,
				     bool verify_host)
{
	assert(cl);
	struct tls_conn *c = tls_conn_alloc(cl->ctx);
	if (!c)
		return NULL;
	SSL_set_msg_callback(c->ssl, msg_cb); /* kTLS sequence numbers */
	SSL_set_msg_callback_arg(c->ssl, c);
	SSL_set_connect_state(c->ssl);
	unsigned char ip[16];
	bool literal = inet_pton(AF_INET, host, ip) == 1 ||
		       inet_pton(AF_INET6, host, ip) == 1;
	if (!literal) /* SNI names hosts, never addresses (RFC 6066 3) */
		SSL_set_tlsext_host_name(c->ssl, host);
	/* OpenSSL 3 checks an address literal against the IP SANs. */
	if (verify_host && SSL_set1_host(c->ssl, host) != 1) {
		tls_conn_free(c);
		ERR_clear_error();
		return NULL;
	}
	/* The ClientHello, into the pending output. */
	c->seen_input = false;
	int r = SSL_do_handshake(c->ssl);
	if (r != 1 && SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ) {
		tls_conn_free(c);
		ERR_clear_error();
		return NULL;
	}
	ERR_clear_error();
	return c;
}
