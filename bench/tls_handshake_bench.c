/* The broker's CPU for a full and for a resumed TLS 1.3 mTLS handshake
 * through kite's tls_conn (tls/), in memory: the TLS part of the
 * tls-storm / tls-storm-resume scenarios without sockets, MQTT or the
 * generator, so that a shared machine disturbs it less. Only the server's
 * calls are timed (thread CPU time): tls_conn_new, every tls_conn_feed of
 * the handshake and a first record, tls_conn_shed, tls_conn_free. The
 * client is OpenSSL in the same thread (ECDSA P-256 client certificate
 * from `kite cert`, as bench/run.py makes them); resumed handshakes offer
 * the ticket of the first one (a ticket of this hour is not renewed).
 *
 *   make build/bench/tls-handshake-bench     # or by hand:
 *   gcc -O2 -std=c17 -D_GNU_SOURCE -I. -o /tmp/tls_handshake_bench \
 *       bench/tls_handshake_bench.c tls/tls.c tls/rec.c -lssl -lcrypto -lpthread
 *   taskset -c 1 /tmp/tls_handshake_bench build/bench/pki 500
 *   valgrind --tool=callgrind /tmp/tls_handshake_bench build/bench/pki 200 resumed
 *
 * Instruction counts (callgrind, inclusive, of tls_conn_new + _feed +
 * _shed + _free) are the figures a shared machine does not disturb.
 *
 * (build/bench/pki: made by any bench/run.py run with TLS scenarios.) */
#include <stdbool.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tls/tls.h"

static double tcpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double srv_cpu;

static void to_server(BIO *out, struct tls_conn *sv, struct tls_buf *plain)
{
	uint8_t buf[65536];
	int n;
	while ((n = BIO_read(out, buf, sizeof(buf))) > 0) {
		double t = tcpu();
		tls_conn_feed(sv, buf, (size_t)n, plain);
		srv_cpu += tcpu() - t;
	}
}

static void to_client(BIO *in, struct tls_conn *sv)
{
	const uint8_t *o;
	size_t n = tls_conn_pending_out(sv, &o);
	if (n) {
		BIO_write(in, o, (int)n);
		tls_conn_consume_out(sv, n);
	}
}

/* One handshake; returns the client's session (with its ticket). */
static SSL_SESSION *one(struct tls_server *s, SSL_CTX *cctx, SSL_SESSION *sess,
			int *reused)
{
	SSL *cl = SSL_new(cctx);
	BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
	SSL_set_bio(cl, in, out);
	SSL_set_connect_state(cl);
	if (sess)
		SSL_set_session(cl, sess);
	double t = tcpu();
	struct tls_conn *sv = tls_conn_new(s);
	srv_cpu += tcpu() - t;
	struct tls_buf plain = {0};
	for (int i = 0; i < 10 && !SSL_is_init_finished(cl); i++) {
		SSL_do_handshake(cl);
		to_server(out, sv, &plain);
		to_client(in, sv);
	}
	SSL_write(cl, "x", 1);
	to_server(out, sv, &plain);
	t = tcpu();
	tls_conn_shed(sv);
	srv_cpu += tcpu() - t;
	char b[8];
	SSL_read(cl, b, sizeof(b));
	*reused = SSL_session_reused(cl);
	SSL_shutdown(cl);
	SSL_SESSION *ns = SSL_get1_session(cl);
	t = tcpu();
	tls_conn_free(sv);
	srv_cpu += tcpu() - t;
	tls_buf_free(&plain);
	SSL_free(cl);
	ERR_clear_error();
	return ns;
}

int main(int argc, char **argv)
{
	const char *pki = argc > 1 ? argv[1] : "build/bench/pki";
	int n = argc > 2 ? atoi(argv[2]) : 500;
	char ca[256], crt[256], key[256], ccrt[256], ckey[256], err[256];
	snprintf(ca, sizeof(ca), "%s/ca.pem", pki);
	snprintf(crt, sizeof(crt), "%s/server.pem", pki);
	snprintf(key, sizeof(key), "%s/server.key", pki);
	snprintf(ccrt, sizeof(ccrt), "%s/clients/dev-1.pem", pki);
	snprintf(ckey, sizeof(ckey), "%s/clients/dev-1.key", pki);
	struct tls_listener_opts o = {.cafile = ca, .certfile = crt, .keyfile = key,
				      .require_certificate = true,
				      .use_identity_as_username = true,
				      /* The listener's ciphers_tls1.3, if given. */
				      .ciphers_tls13 = getenv("CIPHERS_TLS13")};
	struct tls_server *s = tls_server_new(&o, err, sizeof(err));
	if (!s) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate_file(cctx, ccrt, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(cctx, ckey, SSL_FILETYPE_PEM) != 1) {
		fprintf(stderr, "client cert %s\n", ccrt);
		return 1;
	}
	int reused;
	SSL_SESSION *sess = one(s, cctx, NULL, &reused);
	if (argc > 3) { /* "full" or "resumed" only: for perf or callgrind */
		bool full = !strcmp(argv[3], "full");
		for (int i = 0; i < n; i++)
			SSL_SESSION_free(one(s, cctx, full ? NULL : sess, &reused));
		return 0;
	}
	/* Rounds alternate, so a busy neighbour hits both kinds alike. */
	for (int round = 0; round < 3; round++) {
		srv_cpu = 0;
		for (int i = 0; i < n; i++)
			SSL_SESSION_free(one(s, cctx, NULL, &reused));
		double full = srv_cpu / n;
		srv_cpu = 0;
		int r = 0;
		for (int i = 0; i < n; i++) {
			SSL_SESSION_free(one(s, cctx, sess, &reused));
			r += reused;
		}
		double res = srv_cpu / n;
		printf("full %.1f us, resumed %.1f us (%d/%d reused), ratio %.3f\n",
		       full * 1e6, res * 1e6, r, n, res / full);
	}
	return 0;
}
