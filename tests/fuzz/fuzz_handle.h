/* The packet handlers' libFuzzer targets (fuzz_handle_*.c), each a few
 * lines that name one packet type and include this driver. The shard runs
 * in tests/io/harness.h: no socket, no thread.
 *
 * Input: byte 0 holds flags (bit 0: the client speaks MQTT 5, else 3.1.1;
 * bits 4-7: the fixed header's flags); the rest is the packet's body. For
 * CONNECT the body is the whole CONNECT; for the others a connection
 * first connects cleanly. Checked after the packet:
 *  - everything the broker sent is a sequence of whole MQTT packets of
 *    types a server may send;
 *  - the connection is either closed, or still answers a PINGREQ (its
 *    PINGRESP comes last);
 *  - the connection's end leaves no connection or subscription behind,
 *    nor a session unless a fuzzed CONNECT asked for one that stays (the
 *    shard counts them). */
#ifndef KITE_FUZZ_HANDLE_H
#define KITE_FUZZ_HANDLE_H

#include "tests/io/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FUZZ_PACKET_TYPE
#error "define FUZZ_PACKET_TYPE (enum mqtt_type) before including"
#endif

#define FUZZ_CHECK(c)                                                        \
	do {                                                                  \
		if (!(c)) {                                                   \
			fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n",     \
				__FILE__, __LINE__, #c);                      \
			abort();                                              \
		}                                                             \
	} while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct harness fuzz_h;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];
	int rc = harness_init(&fuzz_h,
			      "listener 1883 127.0.0.1\n"
			      "allow_anonymous true\n"
			      "log_dest none\n",
			      err, sizeof(err));
	(void)argc;
	(void)argv;
	if (rc > 0) {
		fprintf(stderr, "fuzz: skipped: %s\n", err);
		exit(0);
	}
	if (rc < 0) {
		fprintf(stderr, "fuzz: harness: %s\n", err);
		exit(1);
	}
	return 0;
}

/* Whole packets of server-to-client types; true when the last one is a
 * PINGRESP. */
static bool fuzz_output_whole(const uint8_t *p, size_t n)
{
	bool last_pingresp = false;
	size_t i = 0;

	while (i < n) {
		unsigned type = p[i] >> 4;
		FUZZ_CHECK(type != MQTT_CONNECT && type != MQTT_SUBSCRIBE &&
			   type != MQTT_UNSUBSCRIBE && type != MQTT_PINGREQ &&
			   type != 0);
		uint32_t len = 0;
		size_t k = 1;
		for (unsigned shift = 0;; shift += 7, k++) {
			FUZZ_CHECK(k <= 4 && i + k < n);
			len |= (uint32_t)(p[i + k] & 0x7f) << shift;
			if (!(p[i + k] & 0x80))
				break;
		}
		FUZZ_CHECK(n - (i + k + 1) >= len);
		last_pingresp = type == MQTT_PINGRESP && len == 0;
		i += k + 1 + len;
	}
	return last_pingresp;
}

static size_t fuzz_header(uint8_t *hdr, uint8_t first, size_t len)
{
	size_t k = 0;

	hdr[k++] = first;
	do {
		hdr[k++] = (uint8_t)((len & 0x7f) | (len > 0x7f ? 0x80 : 0));
		len >>= 7;
	} while (len);
	return k;
}

static void fuzz_connect(struct hconn *hc, bool v5)
{
	static const uint8_t c311[] = {0x10, 13, 0, 4, 'M', 'Q', 'T', 'T',
				       4, 0x02, 0, 60, 0, 1, 'f'};
	static const uint8_t c5[] = {0x10, 14, 0, 4, 'M', 'Q', 'T', 'T', 5,
				     0x02, 0, 60, 0, 0, 1, 'f'};
	const uint8_t *out;

	if (v5)
		harness_input(&fuzz_h, hc, c5, sizeof(c5));
	else
		harness_input(&fuzz_h, hc, c311, sizeof(c311));
	size_t n = harness_output(&fuzz_h, hc, &out);
	FUZZ_CHECK(n >= 4 && out[0] == 0x20 && out[3] == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t pkt[5 + 65536];
	static const uint8_t pingreq[] = {0xc0, 0x00};
	const uint8_t *out;

	if (size < 1 || size - 1 > 65536)
		return 0;
	struct hconn *hc = harness_connect(&fuzz_h);
	FUZZ_CHECK(hc);
	if (FUZZ_PACKET_TYPE != MQTT_CONNECT)
		fuzz_connect(hc, data[0] & 1);
	size_t body = size - 1;
	size_t k = fuzz_header(pkt, (uint8_t)(FUZZ_PACKET_TYPE << 4 |
					      (data[0] >> 4)),
			       body);
	memcpy(pkt + k, data + 1, body);
	harness_input(&fuzz_h, hc, pkt, k + body);
	size_t n = harness_output(&fuzz_h, hc, &out);
	(void)fuzz_output_whole(out, n);
	struct conn *c = harness_conn(&fuzz_h, hc);
	if (c && c->state == CONN_ACTIVE) {
		harness_input(&fuzz_h, hc, pingreq, sizeof(pingreq));
		n = harness_output(&fuzz_h, hc, &out);
		FUZZ_CHECK(fuzz_output_whole(out, n) ||
			   !harness_conn(&fuzz_h, hc));
	}
	harness_close(&fuzz_h, hc);
	FUZZ_CHECK(fuzz_h.s->stats.clients_connected == 0);
	/* A fuzzed CONNECT may ask for a session that outlives it. */
	FUZZ_CHECK(fuzz_h.s->stats.sessions == 0 ||
		   FUZZ_PACKET_TYPE == MQTT_CONNECT);
	FUZZ_CHECK(fuzz_h.s->stats.subscriptions == 0);
	FUZZ_CHECK(fuzz_h.s->conns_used == 0);
	return 0;
}

#endif
