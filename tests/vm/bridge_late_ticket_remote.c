/* A minimal MQTT remote for a bridge over TLS 1.3 (tests/vm,
 * guest_bridge_ktls.sh). Brokers send their session tickets right after
 * the handshake, but a server may send one at any time (RFC 8446 4.6.1),
 * so after the bridge moved to kernel TLS the kernel hands kite a
 * handshake record. This remote answers the bridge's CONNECT with a
 * CONNACK and no ticket, waits DELAY_MS (the bridge moves meanwhile),
 * sends a NewSessionTicket and then a PUBLISH of TOPIC/PAYLOAD, then
 * reads until the bridge forwards a PUBLISH back (not its $SYS
 * notification), and prints
 * "got TOPIC PAYLOAD" for it. A bridge that drops the ticket delivers
 * the first PUBLISH locally and the second one here.
 *
 *   bridge_late_ticket_remote PORT CERT KEY TOPIC PAYLOAD DELAY_MS
 * Exit 0 when a PUBLISH came back, 1 otherwise. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static int die(const char *what)
{
	fprintf(stderr, "bridge_late_ticket_remote: %s\n", what);
	ERR_print_errors_fp(stderr);
	return 1;
}

/* Reads one MQTT packet: its first byte, body into buf (at most cap). */
static int read_packet(SSL *ssl, unsigned char *type, unsigned char *buf,
		       size_t cap, size_t *len)
{
	unsigned char b;
	size_t n = 0, mult = 1;

	if (SSL_read(ssl, type, 1) != 1)
		return -1;
	do {
		if (SSL_read(ssl, &b, 1) != 1 || mult > 128 * 128 * 128)
			return -1;
		n += (b & 127) * mult;
		mult *= 128;
	} while (b & 128);
	if (n > cap)
		return -1;
	for (size_t got = 0; got < n;) {
		int r = SSL_read(ssl, buf + got, (int)(n - got));
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	*len = n;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: %s PORT CERT KEY TOPIC PAYLOAD DELAY_MS\n", argv[0]);
		return 2;
	}
	const char *topic = argv[4], *payload = argv[5];
	size_t tlen = strlen(topic), plen = strlen(payload);
	long delay_ms = atol(argv[6]);
	if (tlen + plen + 2 > 127)
		return die("topic and payload too long for this test");

	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
	    SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1)
		return die("TLS setup");
	SSL_CTX_set_num_tickets(ctx, 0); /* none with the handshake */

	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1))
		return die("listen");
	int fd = accept(l, NULL, NULL);
	SSL *ssl = fd >= 0 ? SSL_new(ctx) : NULL;
	if (!ssl || !SSL_set_fd(ssl, fd) || SSL_accept(ssl) != 1)
		return die("handshake");

	unsigned char type, buf[4096];
	size_t len;
	if (read_packet(ssl, &type, buf, sizeof(buf), &len) || (type & 0xf0) != 0x10)
		return die("no CONNECT");
	static const unsigned char connack[] = {0x20, 2, 0, 0};
	if (SSL_write(ssl, connack, sizeof(connack)) != (int)sizeof(connack))
		return die("CONNACK");

	struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
	if (SSL_new_session_ticket(ssl) != 1 || SSL_do_handshake(ssl) != 1)
		return die("late session ticket");
	fprintf(stderr, "bridge_late_ticket_remote: ticket sent\n");

	unsigned char pub[130];
	size_t n = 0;
	pub[n++] = 0x30; /* PUBLISH, QoS 0 */
	pub[n++] = (unsigned char)(2 + tlen + plen);
	pub[n++] = (unsigned char)(tlen >> 8);
	pub[n++] = (unsigned char)tlen;
	memcpy(pub + n, topic, tlen);
	n += tlen;
	memcpy(pub + n, payload, plen);
	n += plen;
	if (SSL_write(ssl, pub, (int)n) != (int)n)
		return die("PUBLISH");

	/* The bridge's SUBSCRIBE, PINGREQs, ... until a PUBLISH. */
	for (;;) {
		if (read_packet(ssl, &type, buf, sizeof(buf) - 1, &len))
			return die("connection ended before a PUBLISH came back");
		if ((type & 0xf0) != 0x30 || len < 2)
			continue;
		size_t tl = (size_t)buf[0] << 8 | buf[1];
		size_t off = 2 + tl + ((type & 0x06) ? 2 : 0);
		if (off > len)
			return die("malformed PUBLISH");
		if (tl && buf[2] == '$')
			continue; /* the bridge's notification */
		buf[len] = 0;
		printf("got %.*s %s\n", (int)tl, (const char *)buf + 2,
		       (const char *)buf + off);
		fflush(stdout);
		break;
	}
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	close(l);
	SSL_CTX_free(ctx);
	return 0;
}
