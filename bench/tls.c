/* The TLS transport of kite-bench: OpenSSL over the same non-blocking,
 * level-triggered epoll sockets as plain TCP. Each connection gets its own
 * SSL object (SSL_set_fd on its fd) in client mode; the handshake is driven
 * by SSL_do_handshake on every event until it completes, waiting for
 * whatever SSL_ERROR_WANT_READ / WANT_WRITE asks for (c->tp_wants).
 *
 * Client certificates: one (--cert/--key) for every connection, or a
 * directory of per-client certificates (--cert-dir DIR: DIR/clients/
 * PREFIXn.pem and .key for n = 1..N, as `kite cert clients --count N
 * --prefix PREFIX` writes them), handed out round-robin to each new
 * connection and parsed once, on first use.
 *
 * Session resumption is off by default (no session cache, no tickets asked
 * for): every connection pays for a full handshake, which is what a broker
 * sees from a fleet of devices reconnecting after a broker restart. With
 * --tls-resume each client identity keeps the session (with its ticket) of
 * its last connection and the next connection under that identity offers
 * it (SSL_set_session): the fleet reconnecting after a network outage. */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "bench/bench.h"

/* One client identity, parsed lazily. */
struct kb_ident {
	X509 *cert;
	EVP_PKEY *key;
};

static struct {
	SSL_CTX *ctx;
	struct kb_ident *ids;
	uint32_t nids, next;
	char dir[512], prefix[64];
	char last_err[160];
	char version[64]; /* of the first handshake */
	uint64_t handshakes, failures, resumed;
	bool resume;
	SSL_SESSION **sess; /* per identity (one with --cert): the newest */
	uint32_t nsess;
} T;

static void tls_err(const char *what)
{
	unsigned long e = ERR_peek_last_error();
	char buf[120];
	ERR_error_string_n(e, buf, sizeof(buf));
	snprintf(T.last_err, sizeof(T.last_err), "%.60s: %.95s", what,
		 e ? buf : strerror(errno));
	ERR_clear_error();
}

const char *kb_tls_last_error(void)
{
	return T.last_err;
}

const char *kb_tls_version(void)
{
	return T.version;
}

uint64_t kb_tls_handshakes(void)
{
	return T.handshakes;
}

uint64_t kb_tls_resumed(void)
{
	return T.resumed;
}

static int ident_load(uint32_t i)
{
	struct kb_ident *id = &T.ids[i];
	if (id->cert)
		return 0;
	char path[700];
	snprintf(path, sizeof(path), "%s/clients/%s%u.pem", T.dir, T.prefix,
		 i + 1);
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(T.last_err, sizeof(T.last_err), "%.100s: %.50s", path,
			 strerror(errno));
		return -1;
	}
	id->cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	snprintf(path, sizeof(path), "%s/clients/%s%u.key", T.dir, T.prefix,
		 i + 1);
	f = fopen(path, "r");
	if (f) {
		id->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
		fclose(f);
	}
	if (!id->cert || !id->key) {
		tls_err(path);
		X509_free(id->cert);
		EVP_PKEY_free(id->key);
		id->cert = NULL;
		id->key = NULL;
		return -1;
	}
	return 0;
}

int kb_tls_init(const struct kb_opts *o, char *err, size_t errlen)
{
	T.ctx = SSL_CTX_new(TLS_client_method());
	if (!T.ctx)
		goto fail;
	int v12 = TLS1_2_VERSION, v13 = TLS1_3_VERSION;
	int lo = v12, hi = v13;
	if (o->tls_version) {
		if (!strcmp(o->tls_version, "1.2") ||
		    !strcmp(o->tls_version, "tlsv1.2"))
			lo = hi = v12;
		else if (!strcmp(o->tls_version, "1.3") ||
			 !strcmp(o->tls_version, "tlsv1.3"))
			lo = hi = v13;
		else {
			snprintf(err, errlen, "--tls-version: 1.2 or 1.3");
			return -1;
		}
	}
	SSL_CTX_set_min_proto_version(T.ctx, lo);
	SSL_CTX_set_max_proto_version(T.ctx, hi);
	/* No client session cache: with --tls-resume the sessions are kept
	 * per identity here; without, no tickets are asked for. */
	SSL_CTX_set_session_cache_mode(T.ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(T.ctx, SSL_OP_NO_COMPRESSION |
					   (o->tls_resume ? 0 : SSL_OP_NO_TICKET));
	T.resume = o->tls_resume;
	/* Writes go to a memory BIO (tls_seal) and never wait, so these
	 * modes only keep a retry harmless. OpenSSL's buffers stay with the
	 * connection (no RELEASE_BUFFERS): releasing them costs a malloc
	 * and a free per record at every message rate. */
	SSL_CTX_set_mode(T.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
					SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* One read(2) takes every record the socket holds, instead of one
	 * for each record's header and another for its body. */
	SSL_CTX_set_read_ahead(T.ctx, 1);
	if (o->cafile) {
		if (SSL_CTX_load_verify_locations(T.ctx, o->cafile, NULL) != 1) {
			tls_err(o->cafile);
			goto fail_msg;
		}
		SSL_CTX_set_verify(T.ctx, SSL_VERIFY_PEER, NULL);
		/* The server certificate must name 127.0.0.1. */
		X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(T.ctx),
					      "127.0.0.1");
	}
	if (o->cert) {
		if (SSL_CTX_use_certificate_chain_file(T.ctx, o->cert) != 1) {
			tls_err(o->cert);
			goto fail_msg;
		}
		if (SSL_CTX_use_PrivateKey_file(T.ctx, o->key ? o->key : o->cert,
						SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(T.ctx) != 1) {
			tls_err(o->key ? o->key : o->cert);
			goto fail_msg;
		}
	} else if (o->cert_dir) {
		snprintf(T.dir, sizeof(T.dir), "%s", o->cert_dir);
		snprintf(T.prefix, sizeof(T.prefix), "%s",
			 o->cert_prefix ? o->cert_prefix : "dev-");
		uint32_t n = o->cert_count;
		if (n == 0) {
			/* As many as there are, counted from 1. */
			char path[700];
			struct stat st;
			for (;;) {
				snprintf(path, sizeof(path), "%s/clients/%s%u.pem",
					 T.dir, T.prefix, n + 1);
				if (stat(path, &st) != 0)
					break;
				n++;
			}
		}
		if (n == 0) {
			snprintf(err, errlen, "--cert-dir %s: no clients/%s1.pem",
				 T.dir, T.prefix);
			return -1;
		}
		T.ids = calloc(n, sizeof(*T.ids));
		if (!T.ids)
			goto fail;
		T.nids = n;
		if (ident_load(0) != 0)
			goto fail_msg;
	}
	T.nsess = T.nids ? T.nids : 1;
	if (T.resume && !(T.sess = calloc(T.nsess, sizeof(*T.sess))))
		goto fail;
	return 0;
fail:
	tls_err("SSL_CTX");
fail_msg:
	snprintf(err, errlen, "%s", T.last_err);
	return -1;
}

uint32_t kb_tls_identities(void)
{
	return T.nids;
}

/* ---- transport ---------------------------------------------------------- */

/* Moves the records OpenSSL wrote to memory to the end of c->wbuf, as
 * bytes for the wire. Plaintext not yet sealed must not sit there. */
static int wire_take(struct kb_conn *c)
{
	SSL *ssl = c->tp_state;
	BIO *wbio = SSL_get_wbio(ssl);
	size_t n = BIO_ctrl_pending(wbio);
	assert(c->wseal == c->wlen);
	if (!n)
		return 0;
	uint8_t *p = kb_wbuf_reserve_raw(NULL, c, n);
	if (!p || BIO_read(wbio, p, (int)n) != (int)n)
		return -1;
	c->wlen += (uint32_t)n;
	c->wseal = c->wlen;
	return 0;
}

/* Encrypts the plaintext queued since the last seal into records, in
 * place of it: wbuf[wseal, wlen) becomes ciphertext. */
static int tls_seal(struct kb_conn *c)
{
	SSL *ssl = c->tp_state;
	uint32_t plain = c->wlen - c->wseal;
	if (!plain && !BIO_ctrl_pending(SSL_get_wbio(ssl)))
		return 0;
	ERR_clear_error();
	/* The memory BIO takes every record: SSL_write never waits. */
	for (uint32_t done = 0; done < plain;) {
		int n = SSL_write(ssl, c->wbuf + c->wseal + done,
				  (int)(plain - done));
		if (n <= 0) {
			tls_err("SSL_write");
			return -1;
		}
		done += (uint32_t)n;
	}
	c->wlen = c->wseal; /* the plaintext is in the records now */
	return wire_take(c);
}

static int tls_start(struct kb_conn *c)
{
	SSL *ssl = c->tp_state;
	if (!ssl) {
		ssl = SSL_new(T.ctx);
		if (!ssl) {
			tls_err("SSL_new");
			return -1;
		}
		uint32_t i = T.nids ? T.next++ % T.nids : 0;
		/* Which identity's session this connection renews (bit 0:
		 * renewed already). */
		SSL_set_app_data(ssl, (void *)((uintptr_t)i << 1));
		if (T.resume && T.sess[i])
			SSL_set_session(ssl, T.sess[i]);
		if (T.nids) {
			if (ident_load(i) != 0 ||
			    SSL_use_certificate(ssl, T.ids[i].cert) != 1 ||
			    SSL_use_PrivateKey(ssl, T.ids[i].key) != 1) {
				if (!T.last_err[0])
					tls_err("client certificate");
				SSL_free(ssl);
				return -1;
			}
		}
		/* Reads come from the socket; records written go to memory
		 * and reach the socket with the plain bytes' sends
		 * (tls_seal), so a turn's sends leave in one io_uring_enter
		 * instead of a write(2) per record. */
		BIO *wbio = BIO_new(BIO_s_mem());
		if (!wbio || SSL_set_rfd(ssl, c->fd) != 1) {
			BIO_free(wbio);
			tls_err("BIO");
			SSL_free(ssl);
			return -1;
		}
		SSL_set0_wbio(ssl, wbio);
		SSL_set_connect_state(ssl);
		c->tp_state = ssl;
	}
	ERR_clear_error();
	int rc = SSL_do_handshake(ssl);
	/* The handshake's own records: at once, the socket is nearly
	 * empty now; what it refuses waits for EPOLLOUT (or, once the
	 * handshake is done, for the first flush). */
	if (wire_take(c) != 0 || kb_conn_push(c) < 0) {
		tls_err("TLS handshake: send");
		T.failures++;
		return -1;
	}
	if (rc == 1) {
		T.resumed += SSL_session_reused(ssl);
		if (!T.handshakes++)
			snprintf(T.version, sizeof(T.version), "%s %s",
				 SSL_get_version(ssl),
				 SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
		return 1;
	}
	switch (SSL_get_error(ssl, rc)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		c->tp_wants = EPOLLIN | (kb_conn_pending(c) ? EPOLLOUT : 0);
		return 0;
	default: {
		long vr = SSL_get_verify_result(ssl);
		if (vr != X509_V_OK) {
			snprintf(T.last_err, sizeof(T.last_err),
				 "TLS handshake: server certificate: %s",
				 X509_verify_cert_error_string(vr));
			ERR_clear_error();
		} else {
			tls_err("TLS handshake");
		}
		T.failures++;
		return -1;
	}
	}
}

/* --tls-resume: the identity's newest session, once this connection has
 * one with a ticket (TLS 1.3: read after the handshake, before any data).
 * A copy: OpenSSL marks the connection's own session not resumable when
 * the connection later ends in an error (a storm connection ends at the
 * broker's close). */
static void session_keep(SSL *ssl)
{
	uintptr_t tag = (uintptr_t)SSL_get_app_data(ssl);
	SSL_SESSION *cur = SSL_get0_session(ssl);
	uint32_t i = (uint32_t)(tag >> 1);
	if ((tag & 1) || !cur || !SSL_SESSION_is_resumable(cur) || i >= T.nsess)
		return;
	SSL_SESSION *copy = SSL_SESSION_dup(cur);
	if (!copy)
		return;
	SSL_SESSION_free(T.sess[i]);
	T.sess[i] = copy;
	SSL_set_app_data(ssl, (void *)(tag | 1));
}

/* Reads records until OpenSSL wants the socket again. With read-ahead
 * OpenSSL may hold bytes the socket no longer has, where a level-triggered
 * epoll would not see them: when the buffer fills first, c->tp_more asks
 * the loop to come back at once (the caller consumes whole packets, so
 * each pass makes room). */
static ssize_t tls_read_records(struct kb_conn *c, uint8_t *buf, size_t len)
{
	SSL *ssl = c->tp_state;
	size_t got = 0;
	ERR_clear_error();
	c->tp_more = false;
	while (got < len) {
		errno = 0;
		int n = SSL_read(ssl, buf + got, (int)(len - got > INT32_MAX
							 ? INT32_MAX
							 : len - got));
		if (n > 0) {
			got += (size_t)n;
			if (T.resume)
				session_keep(ssl);
			continue;
		}
		int e = SSL_get_error(ssl, n);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			if (got)
				return (ssize_t)got;
			errno = EAGAIN;
			return -1;
		}
		if (got)
			return (ssize_t)got; /* the EOF or error shows next time */
		if (e == SSL_ERROR_ZERO_RETURN ||
		    (e == SSL_ERROR_SYSCALL && errno == 0))
			return 0;
		if (e == SSL_ERROR_SSL)
			tls_err("SSL_read");
		errno = errno ? errno : EIO;
		if (errno == EAGAIN)
			errno = EIO;
		return -1;
	}
	c->tp_more = true; /* full: OpenSSL may hold more */
	return (ssize_t)got;
}

static ssize_t tls_recv(struct kb_conn *c, uint8_t *buf, size_t len)
{
	ssize_t n = tls_read_records(c, buf, len);
	/* Records of its own the reading wrote (an alert, a KeyUpdate's
	 * answer) leave at the next seal. */
	if (BIO_ctrl_pending(SSL_get_wbio(c->tp_state)))
		c->tp_flush = true;
	return n;
}

static void tls_close(struct kb_conn *c)
{
	SSL *ssl = c->tp_state;
	if (!ssl)
		return;
	/* A storm connection is closed after the broker closed it. */
	if (SSL_is_init_finished(ssl) && c->state != KB_ST_DISCONNECTING &&
	    !(SSL_get_shutdown(ssl) & (SSL_SENT_SHUTDOWN |
				       SSL_RECEIVED_SHUTDOWN))) {
		/* close_notify, best effort, after what is still queued */
		if (tls_seal(c) == 0 && SSL_shutdown(ssl) >= 0 &&
		    wire_take(c) == 0)
			(void)kb_conn_push(c);
	}
	ERR_clear_error();
	SSL_free(ssl);
	c->tp_state = NULL;
}

const struct kb_transport kb_transport_tls = {
	.name = "tls",
	.start = tls_start,
	.recv = tls_recv,
	.close = tls_close,
	.seal = tls_seal,
};
