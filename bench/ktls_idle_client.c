/* Idle mTLS connection holder for bench/ktls_idle_mem.sh.
 *
 *   ktls_idle_client HOST PORT N CAFILE CERT KEY [ID_PREFIX]
 *
 * Opens N mutual-TLS connections to HOST:PORT one after another (blocking,
 * OpenSSL, default TLS version so TLS 1.3), sends an MQTT 3.1.1 CONNECT
 * (clean session, keepalive 0 so nothing is ever sent again) on each and
 * waits for a successful CONNACK. Then prints "ready N" on stdout and
 * keeps every connection open and idle until it is killed. Any failure
 * prints the connection index and exits 1. Build:
 *
 *   cc -O2 -o build/bench/ktls_idle_client bench/ktls_idle_client.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void die_ssl(const char *what, long i)
{
	fprintf(stderr, "ktls_idle_client: conn %ld: %s\n", i, what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static int full_read(SSL *ssl, unsigned char *buf, int len)
{
	int got = 0;
	while (got < len) {
		int r = SSL_read(ssl, buf + got, len - got);
		if (r <= 0)
			return -1;
		got += r;
	}
	return got;
}

int main(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "usage: %s HOST PORT N CAFILE CERT KEY [ID_PREFIX]\n",
			argv[0]);
		return 2;
	}
	const char *host = argv[1];
	int port = atoi(argv[2]);
	long n = atol(argv[3]);
	const char *prefix = argc > 7 ? argv[7] : "idle";
	signal(SIGPIPE, SIG_IGN);

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		die_ssl("SSL_CTX_new", -1);
	/* Keep the holder itself small: no idle read/write buffers. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (SSL_CTX_load_verify_locations(ctx, argv[4], NULL) != 1)
		die_ssl("CA file", -1);
	if (SSL_CTX_use_certificate_chain_file(ctx, argv[5]) != 1)
		die_ssl("client certificate", -1);
	if (SSL_CTX_use_PrivateKey_file(ctx, argv[6], SSL_FILETYPE_PEM) != 1)
		die_ssl("client key", -1);

	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "ktls_idle_client: bad IPv4 address %s\n", host);
		return 2;
	}
	SSL **conns = calloc((size_t)n, sizeof(*conns));
	if (!conns)
		return 1;

	for (long i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) {
			fprintf(stderr, "ktls_idle_client: conn %ld: socket: %s\n", i,
				strerror(errno));
			return 1;
		}
		struct timeval tv = {.tv_sec = 30};
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			fprintf(stderr, "ktls_idle_client: conn %ld: connect: %s\n", i,
				strerror(errno));
			return 1;
		}
		SSL *ssl = SSL_new(ctx);
		if (!ssl)
			die_ssl("SSL_new", i);
		SSL_set_fd(ssl, fd);
		SSL_set_tlsext_host_name(ssl, "localhost");
		if (SSL_connect(ssl) != 1)
			die_ssl("handshake", i);

		/* MQTT 3.1.1 CONNECT: clean session, keepalive 0. */
		char id[64];
		int idlen = snprintf(id, sizeof(id), "%s-%d-%ld", prefix, (int)getpid(), i);
		unsigned char pkt[96];
		int rl_len = 10 + 2 + idlen;
		int p = 0;
		pkt[p++] = 0x10;
		pkt[p++] = (unsigned char)rl_len;
		memcpy(pkt + p, "\0\4MQTT\4\2\0\0", 10);
		p += 10;
		pkt[p++] = 0;
		pkt[p++] = (unsigned char)idlen;
		memcpy(pkt + p, id, (size_t)idlen);
		p += idlen;
		if (SSL_write(ssl, pkt, p) != p)
			die_ssl("write CONNECT", i);
		unsigned char ack[4];
		if (full_read(ssl, ack, 4) < 0)
			die_ssl("read CONNACK", i);
		if (ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0) {
			fprintf(stderr, "ktls_idle_client: conn %ld: bad CONNACK %02x %02x %02x %02x\n",
				i, ack[0], ack[1], ack[2], ack[3]);
			return 1;
		}
		conns[i] = ssl;
	}
	printf("ready %ld\n", n);
	fflush(stdout);
	for (;;)
		pause();
}
