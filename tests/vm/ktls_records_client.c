/* TLS control-record client for tests/vm/test_ktls_records_vm.sh (runs in
 * the VM, next to kite). Over mutual TLS it sends an MQTT 3.1.1 CONNECT,
 * waits for CONNACK, sleeps WAIT_MS (so kite has moved the connection to
 * kernel TLS), prints the /proc/net/tls_stat deltas since before connect,
 * then sends one non-application-data record:
 *
 *   ktls_records_client MODE tls1.2|tls1.3 PORT CA CERT KEY ID [WAIT_MS [SUITE]]
 *
 *   SUITE: the only TLS 1.3 cipher suite offered (default: OpenSSL's).
 *
 *   notify     SSL_shutdown (warning alert close_notify), then close
 *   keyupdate  SSL_key_update(NOT_REQUESTED) + SSL_write(PINGREQ) (TLS 1.3)
 *   keyupdate-rounds
 *              three rounds of SSL_key_update, alternately REQUESTED and
 *              NOT_REQUESTED, each followed by a SUBSCRIBE/PUBLISH round
 *              trip on the same connection; then DISCONNECT. Prints
 *              "client: peer key updates N" (kite's KeyUpdates that
 *              OpenSSL processed) and exits 0 only if every round trip
 *              came back.
 *   keyupdate-flood
 *              twelve KeyUpdates (not requested), each followed by a
 *              PINGREQ, as fast as possible (kite allows 8 a second)
 *   reneg      SSL_renegotiate + SSL_do_handshake: a ClientHello (TLS 1.2)
 *   alert      a raw fatal alert (level 2, handshake_failure 40): the
 *              client turns on kTLS TX (SSL_OP_ENABLE_KTLS) and writes the
 *              record with sendmsg + TLS_SET_RECORD_TYPE 21
 *   pubsub     SUBSCRIBE + PUBLISH to itself, wait for the PUBLISH back
 *
 * After sending it reports what kite did ("peer: close_notify",
 * "peer: EOF", "peer: PINGRESP", ...). Output lines start with "client:".
 * Exit 0 if the record went out (pubsub: if the message came back). Build:
 *   cc -O2 -o build/vm/ktls_records_client tests/vm/ktls_records_client.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TLS_SET_RECORD_TYPE
#define TLS_SET_RECORD_TYPE 1
#endif

static const char *mode;

static void die(const char *what)
{
	fprintf(stderr, "client: %s: %s failed\n", mode, what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static long stat_of(const char *key)
{
	FILE *f = fopen("/proc/net/tls_stat", "r");
	char k[64];
	long v, r = -1;
	if (!f)
		return -1;
	while (fscanf(f, "%63s %ld", k, &v) == 2)
		if (!strcmp(k, key))
			r = v;
	fclose(f);
	return r;
}

static int full_read(SSL *ssl, unsigned char *b, int len)
{
	int got = 0;
	while (got < len) {
		int r = SSL_read(ssl, b + got, len - got);
		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

/* One MQTT packet: fixed header + body (remaining length < 16384). */
static int read_packet(SSL *ssl, unsigned char *type, unsigned char *body,
		       int cap, int *len)
{
	unsigned char h[1], lb;
	int rl = 0, shift = 0;
	if (full_read(ssl, h, 1))
		return -1;
	do {
		if (full_read(ssl, &lb, 1))
			return -1;
		rl |= (lb & 0x7f) << shift;
		shift += 7;
	} while ((lb & 0x80) && shift < 21);
	if (rl > cap || full_read(ssl, body, rl))
		return -1;
	*type = h[0];
	*len = rl;
	return 0;
}

static void write_all(SSL *ssl, const void *p, int n, const char *what)
{
	if (SSL_write(ssl, p, n) != n)
		die(what);
}

/* KeyUpdate messages from the peer, seen by the message callback. */
static int peer_key_updates;

static void msg_cb(int write_p, int version, int content_type, const void *buf,
		   size_t len, SSL *ssl, void *arg)
{
	if (!write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
	    ((const unsigned char *)buf)[0] == SSL3_MT_KEY_UPDATE)
		peer_key_updates++;
}

/* SUBSCRIBE (first time only) + PUBLISH PAYLOAD to itself, and the
 * PUBLISH must come back: both directions carry MQTT. */
static void pubsub_round(SSL *ssl, const char *payload, int subscribe)
{
	static const char topic[] = "kite/records";
	unsigned char s[128], type, body[512];
	int t = (int)sizeof(topic) - 1, m = 0, len, pl = (int)strlen(payload);
	if (subscribe) {
		s[m++] = 0x82;
		s[m++] = (unsigned char)(2 + 2 + t + 1);
		s[m++] = 0, s[m++] = 1;
		s[m++] = 0, s[m++] = (unsigned char)t;
		memcpy(s + m, topic, (size_t)t), m += t;
		s[m++] = 0;
		write_all(ssl, s, m, "SUBSCRIBE");
		if (read_packet(ssl, &type, body, sizeof(body), &len) || type != 0x90)
			die("SUBACK");
	}
	m = 0;
	s[m++] = 0x30;
	s[m++] = (unsigned char)(2 + t + pl);
	s[m++] = 0, s[m++] = (unsigned char)t;
	memcpy(s + m, topic, (size_t)t), m += t;
	memcpy(s + m, payload, (size_t)pl), m += pl;
	write_all(ssl, s, m, "PUBLISH");
	if (read_packet(ssl, &type, body, sizeof(body), &len) ||
	    (type & 0xf0) != 0x30 || len != 2 + t + pl ||
	    memcmp(body + 2 + t, payload, (size_t)pl))
		die("PUBLISH round trip");
}

/* What did the broker do after our record? Reads until close/error. */
static void report_peer(SSL *ssl)
{
	unsigned char type, body[512];
	int len;
	for (;;) {
		ERR_clear_error();
		errno = 0;
		if (read_packet(ssl, &type, body, sizeof(body), &len) == 0) {
			printf("client: peer: MQTT packet 0x%02x (%s)\n", type,
			       type == 0xd0 ? "PINGRESP" : "other");
			continue;
		}
		int sd = SSL_get_shutdown(ssl);
		if (sd & SSL_RECEIVED_SHUTDOWN)
			printf("client: peer: close_notify\n");
		else if (errno == EAGAIN || errno == EWOULDBLOCK)
			printf("client: peer: nothing for 5 s (connection still open)\n");
		else {
			unsigned long e = ERR_peek_error();
			char buf[256];
			snprintf(buf, sizeof(buf), "EOF, errno %s", strerror(errno));
			if (e)
				ERR_error_string_n(e, buf, sizeof(buf));
			printf("client: peer: connection ended (%s)\n", buf);
		}
		return;
	}
}

int main(int argc, char **argv)
{
	if (argc < 8) {
		fprintf(stderr, "usage: ktls_records_client notify|keyupdate|keyupdate-rounds|keyupdate-flood|reneg|alert|pubsub "
				"tls1.2|tls1.3 PORT CA CERT KEY ID [WAIT_MS [SUITE]]\n");
		return 2;
	}
	mode = argv[1];
	int v13 = !strcmp(argv[2], "tls1.3");
	int port = atoi(argv[3]);
	const char *id = argv[7];
	int wait_ms = argc > 8 ? atoi(argv[8]) : 500;
	int alert = !strcmp(mode, "alert");
	setvbuf(stdout, NULL, _IOLBF, 0);
	/* kite may reset the connection: see the error, not SIGPIPE */
	signal(SIGPIPE, SIG_IGN);

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		die("SSL_CTX_new");
	int ver = v13 ? TLS1_3_VERSION : TLS1_2_VERSION;
	SSL_CTX_set_min_proto_version(ctx, ver);
	SSL_CTX_set_max_proto_version(ctx, ver);
	if (v13 && argc > 9 && SSL_CTX_set_ciphersuites(ctx, argv[9]) != 1)
		die("SSL_CTX_set_ciphersuites");
	if (!v13)
		SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256:"
					     "ECDHE-RSA-AES128-GCM-SHA256");
	if (SSL_CTX_load_verify_locations(ctx, argv[4], NULL) != 1 ||
	    SSL_CTX_use_certificate_file(ctx, argv[5], SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, argv[6], SSL_FILETYPE_PEM) != 1)
		die("loading the CA/cert/key");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_msg_callback(ctx, msg_cb);
	if (alert)
		SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);

	long rx0 = stat_of("TlsRxSw"), crx0 = stat_of("TlsCurrRxSw");
	long tx0 = stat_of("TlsTxSw"), ctx0 = stat_of("TlsCurrTxSw");
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");
	struct timeval tv = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	SSL_set1_host(ssl, "127.0.0.1");
	if (SSL_connect(ssl) != 1)
		die("SSL_connect");
	printf("client: %s %s %s\n", mode, SSL_get_version(ssl),
	       SSL_get_cipher_name(ssl));

	/* CONNECT, MQTT 3.1.1, clean session, keepalive 60 */
	unsigned char pk[128];
	int idlen = (int)strlen(id), n = 0;
	pk[n++] = 0x10;
	pk[n++] = (unsigned char)(10 + 2 + idlen);
	memcpy(pk + n, "\0\4MQTT\4\2\0\74", 10);
	n += 10;
	pk[n++] = 0;
	pk[n++] = (unsigned char)idlen;
	memcpy(pk + n, id, (size_t)idlen);
	n += idlen;
	write_all(ssl, pk, n, "CONNECT");
	unsigned char type, body[512];
	int len;
	if (read_packet(ssl, &type, body, sizeof(body), &len) || type != 0x20 ||
	    len < 2 || body[1] != 0)
		die("CONNACK");
	printf("client: CONNACK ok\n");

	if (!strcmp(mode, "pubsub")) {
		pubsub_round(ssl, "hello", 1);
		printf("client: pubsub round trip ok\n");
		SSL_shutdown(ssl);
		close(fd);
		return 0;
	}

	struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
	int my_rx = alert && BIO_get_ktls_recv(SSL_get_rbio(ssl));
	int my_tx = alert && BIO_get_ktls_send(SSL_get_wbio(ssl));
	/* kite's share: minus the client's own kTLS contexts (alert mode) */
	printf("client: tls_stat TlsRxSw %+ld TlsCurrRxSw %+ld TlsTxSw %+ld "
	       "TlsCurrTxSw %+ld (own kTLS rx=%d tx=%d subtracted)\n",
	       stat_of("TlsRxSw") - rx0 - my_rx, stat_of("TlsCurrRxSw") - crx0 - my_rx,
	       stat_of("TlsTxSw") - tx0 - my_tx, stat_of("TlsCurrTxSw") - ctx0 - my_tx,
	       my_rx, my_tx);

	if (!strcmp(mode, "notify")) {
		int r = SSL_shutdown(ssl);
		printf("client: sent close_notify (SSL_shutdown %d)\n", r);
		/* SSL_shutdown returns 0 when ours went out; wait for kite's */
		report_peer(ssl);
	} else if (!strcmp(mode, "keyupdate")) {
		if (!v13)
			die("keyupdate needs tls1.3");
		if (SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
			die("SSL_key_update");
		static const unsigned char ping[2] = {0xc0, 0};
		int r = SSL_write(ssl, ping, 2);
		printf("client: sent KeyUpdate + PINGREQ (SSL_write %d)\n", r);
		report_peer(ssl);
	} else if (!strcmp(mode, "keyupdate-rounds")) {
		if (!v13)
			die("keyupdate-rounds needs tls1.3");
		pubsub_round(ssl, "before", 1);
		for (int round = 0; round < 3; round++) {
			int req = round % 2 == 0;
			char payload[32];
			if (SSL_key_update(ssl, req ? SSL_KEY_UPDATE_REQUESTED
						    : SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
				die("SSL_key_update");
			snprintf(payload, sizeof(payload), "round %d", round);
			pubsub_round(ssl, payload, 0);
			printf("client: KeyUpdate %s, round trip %d ok\n",
			       req ? "(update_requested)" : "(not requested)", round);
		}
		printf("client: peer key updates %d\n", peer_key_updates);
		static const unsigned char disconnect[2] = {0xe0, 0};
		write_all(ssl, disconnect, 2, "DISCONNECT");
		report_peer(ssl);
	} else if (!strcmp(mode, "keyupdate-flood")) {
		if (!v13)
			die("keyupdate-flood needs tls1.3");
		static const unsigned char ping[2] = {0xc0, 0};
		int sent = 0;
		for (int i = 0; i < 12; i++) {
			if (SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1 ||
			    SSL_write(ssl, ping, 2) != 2)
				break; /* kite may have closed already */
			sent++;
		}
		printf("client: sent %d KeyUpdate + PINGREQ pairs\n", sent);
		report_peer(ssl);
	} else if (!strcmp(mode, "reneg")) {
		if (v13)
			die("reneg needs tls1.2");
		if (SSL_renegotiate(ssl) != 1)
			die("SSL_renegotiate");
		/* sends the ClientHello, then waits for a ServerHello */
		ERR_clear_error();
		int r = SSL_do_handshake(ssl);
		char err[256] = "none";
		if (ERR_peek_error())
			ERR_error_string_n(ERR_get_error(), err, sizeof(err));
		printf("client: sent a renegotiation ClientHello (SSL_do_handshake %d, "
		       "error: %s)\n", r, err);
		report_peer(ssl);
	} else if (alert) {
		if (!my_tx) {
			printf("client: no kTLS TX on the client: cannot send a raw alert\n");
			return 3;
		}
		unsigned char a[2] = {2, 40}; /* fatal, handshake_failure */
		char cb[CMSG_SPACE(sizeof(unsigned char))];
		struct iovec iov = {a, 2};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
				    .msg_control = cb, .msg_controllen = sizeof(cb)};
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_TLS;
		cm->cmsg_type = TLS_SET_RECORD_TYPE;
		cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
		*CMSG_DATA(cm) = 21;
		ssize_t r = sendmsg(fd, &mh, 0);
		if (r != 2) {
			perror("client: sendmsg alert");
			return 1;
		}
		printf("client: sent fatal alert 40 (kTLS sendmsg, record type 21)\n");
		report_peer(ssl);
	} else {
		fprintf(stderr, "client: unknown mode %s\n", mode);
		return 2;
	}
	close(fd);
	return 0;
}
