/* The PROXY protocol header parser (core/proxyproto.h). */
#include "core/crc32c.h"
#include "core/proxyproto.h"
#include "runner.h"

#include <arpa/inet.h>
#include <string.h>

static int p1(const char *s, struct proxy_info *pi, const char **why)
{
	return proxy_parse(1, (const uint8_t *)s, strlen(s), pi, why);
}

TEST(proxy_v1_tcp4_gives_source_and_leaves_what_follows)
{
	struct proxy_info pi;
	const char *why;
	const char *h = "PROXY TCP4 127.0.0.2 127.0.0.1 40001 1883\r\n\x10\x0c";
	CHECK_EQ(p1(h, &pi, &why), (int)strlen(h) - 2);
	CHECK_EQ(pi.family, PROXY_INET);
	CHECK_EQ(pi.version, 1);
	CHECK(!memcmp(pi.src, "\x7f\x00\x00\x02", 4));
	CHECK(!memcmp(pi.dst, "\x7f\x00\x00\x01", 4));
	CHECK_EQ(pi.src_port, 40001);
	CHECK_EQ(pi.dst_port, 1883);
}

TEST(proxy_v1_tcp6_and_unknown)
{
	struct proxy_info pi;
	const char *why;
	CHECK_EQ(p1("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n", &pi, &why), 36);
	CHECK_EQ(pi.family, PROXY_INET6);
	uint8_t a[16];
	inet_pton(AF_INET6, "2001:db8::1", a);
	CHECK(!memcmp(pi.src, a, 16));
	CHECK_EQ(pi.src_port, 65535);
	CHECK_EQ(p1("PROXY UNKNOWN\r\n", &pi, &why), 15);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
	CHECK_EQ(p1("PROXY UNKNOWN ffff::1 ::1 1 2\r\n", &pi, &why), 31);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
}

TEST(proxy_v1_partial_header_asks_for_more_until_it_cannot_be_one)
{
	struct proxy_info pi;
	const char *why;
	const char *h = "PROXY TCP4 10.1.2.3 10.0.0.1 1234 1883\r\n";
	for (size_t n = 0; n < strlen(h); n++)
		CHECK_EQ(proxy_parse(1, (const uint8_t *)h, n, &pi, &why), 0);
	CHECK_EQ(p1("PROXX", &pi, &why), -1);
	CHECK_EQ(p1("\x10\x0c\x00\x04MQTT", &pi, &why), -1);
	CHECK(why != NULL);
	/* 107 bytes without CRLF is the end of the line's room. */
	char big[200];
	memset(big, 'a', sizeof(big));
	memcpy(big, "PROXY ", 6);
	CHECK_EQ(proxy_parse(1, (const uint8_t *)big, 106, &pi, &why), 0);
	CHECK_EQ(proxy_parse(1, (const uint8_t *)big, 107, &pi, &why), -1);
	CHECK_EQ(proxy_parse(1, (const uint8_t *)big, 200, &pi, &why), -1);
	/* The longest line the spec allows: UNKNOWN with IPv6 addresses. */
	const char *longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
			      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	CHECK_EQ(strlen(longest), PROXY_V1_MAX);
	CHECK_EQ(p1(longest, &pi, &why), PROXY_V1_MAX);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
}

TEST(proxy_v1_refuses_malformed_lines)
{
	struct proxy_info pi;
	const char *why;
	const char *bad[] = {
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",	    /* LF alone */
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx",
		"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",	    /* two spaces */
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
		"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",	    /* family mismatch */
		"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
		"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
		"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY UNKNOWNX\r\n",
		"PROXY \r\n",
		"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x01\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		if (p1(bad[i], &pi, &why) != -1 || !why)
			fprintf(stderr, "  accepted: %s\n", bad[i]);
		CHECK_EQ(p1(bad[i], &pi, &why), -1);
	}
}

static const uint8_t sig2[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
				 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* A v2 header: command, family byte, then body[blen]. */
static size_t v2(uint8_t *out, uint8_t cmd, uint8_t fam, const uint8_t *body,
		 size_t blen)
{
	memcpy(out, sig2, 12);
	out[12] = (uint8_t)(0x20 | cmd);
	out[13] = fam;
	out[14] = (uint8_t)(blen >> 8);
	out[15] = (uint8_t)blen;
	memcpy(out + 16, body, blen);
	return 16 + blen;
}

TEST(proxy_v2_inet_inet6_and_what_follows_is_left)
{
	struct proxy_info pi;
	const char *why;
	uint8_t h[64];
	const uint8_t b4[12] = {10, 1, 2, 3, 127, 0, 0, 1, 0x9c, 0x41, 0x07, 0x5b};
	size_t n = v2(h, 1, 0x11, b4, sizeof(b4));
	h[n] = 0x10; /* a CONNECT's first byte */
	CHECK_EQ(proxy_parse(2, h, n + 1, &pi, &why), 28);
	CHECK_EQ(pi.family, PROXY_INET);
	CHECK_EQ(pi.version, 2);
	CHECK(!memcmp(pi.src, "\x0a\x01\x02\x03", 4));
	CHECK_EQ(pi.src_port, 40001);
	CHECK_EQ(pi.dst_port, 1883);
	for (size_t i = 0; i < n; i++)
		CHECK_EQ(proxy_parse(2, h, i, &pi, &why), 0);
	uint8_t b6[36] = {0x20, 0x01, 0x0d, 0xb8};
	b6[15] = 7;
	b6[31] = 1;
	b6[32] = 0x12;
	b6[33] = 0x34;
	n = v2(h, 1, 0x21, b6, sizeof(b6));
	CHECK_EQ(proxy_parse(2, h, n, &pi, &why), 52);
	CHECK_EQ(pi.family, PROXY_INET6);
	CHECK_EQ(pi.src[15], 7);
	CHECK_EQ(pi.src_port, 0x1234);
}

TEST(proxy_v2_local_unspec_and_unix_keep_the_socket_address)
{
	struct proxy_info pi;
	const char *why;
	uint8_t h[300], body[216] = {0};
	CHECK_EQ(proxy_parse(2, h, v2(h, 0, 0x00, body, 0), &pi, &why), 16);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
	/* LOCAL ignores whatever address block it carries. */
	CHECK_EQ(proxy_parse(2, h, v2(h, 0, 0x11, body, 12), &pi, &why), 28);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x00, body, 0), &pi, &why), 16);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
	memcpy(body, "/run/client.sock", 16);
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x31, body, 216), &pi, &why), 232);
	CHECK_EQ(pi.family, PROXY_KEEP_SOCKET);
}

TEST(proxy_v2_refuses_bad_headers)
{
	struct proxy_info pi;
	const char *why;
	uint8_t h[2100], body[64] = {0};
	size_t n = v2(h, 1, 0x11, body, 12);
	h[12] = 0x11; /* version 1 in a v2 header */
	CHECK_EQ(proxy_parse(2, h, 13, &pi, &why), -1);
	h[12] = 0x22; /* command 2 */
	CHECK_EQ(proxy_parse(2, h, n, &pi, &why), -1);
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x12, body, 12), &pi, &why), -1); /* dgram */
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x41, body, 12), &pi, &why), -1); /* family 4 */
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x11, body, 11), &pi, &why), -1); /* short */
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x21, body, 12), &pi, &why), -1);
	/* Longer than the cap: refused as soon as the length is read. */
	n = v2(h, 1, 0x11, body, 12);
	h[14] = (PROXY_V2_LEN_MAX + 1) >> 8;
	h[15] = (PROXY_V2_LEN_MAX + 1) & 0xff;
	CHECK_EQ(proxy_parse(2, h, 16, &pi, &why), -1);
	h[14] = 0xff;
	h[15] = 0xff;
	CHECK_EQ(proxy_parse(2, h, 16, &pi, &why), -1);
	/* At the cap: waits for the whole of it. */
	memset(h + 16, 0, PROXY_V2_LEN_MAX);
	h[14] = PROXY_V2_LEN_MAX >> 8;
	h[15] = PROXY_V2_LEN_MAX & 0xff;
	CHECK_EQ(proxy_parse(2, h, 16 + PROXY_V2_LEN_MAX - 1, &pi, &why), 0);
	/* A v1 header on a v2 listener, and MQTT. */
	CHECK_EQ(proxy_parse(2, (const uint8_t *)"PROXY TCP4", 10, &pi, &why), -1);
	CHECK_EQ(proxy_parse(2, (const uint8_t *)"\x10\x0c", 2, &pi, &why), -1);
	CHECK_EQ(proxy_parse(3, h, 16, &pi, &why), -1);
}

TEST(proxy_v2_tlvs_must_tile_and_a_checksum_must_match)
{
	struct proxy_info pi;
	const char *why;
	CHECK_EQ(crc32c(0, "123456789", 9), 0xE3069283u);
	uint8_t h[128], body[64] = {10, 0, 0, 9, 10, 0, 0, 1, 0, 1, 0, 2};
	/* SSL TLV (client, verify, one sub-TLV) then CRC32C. */
	uint8_t tl[] = {0x20, 0x00, 0x08, 0x01, 0, 0, 0, 0, 0x22, 0x00, 0x00,
			0x03, 0x00, 0x04, 0, 0, 0, 0};
	memcpy(body + 12, tl, sizeof(tl));
	size_t n = v2(h, 1, 0x11, body, 12 + sizeof(tl));
	uint32_t crc = crc32c(0, h, n);
	h[n - 4] = (uint8_t)(crc >> 24);
	h[n - 3] = (uint8_t)(crc >> 16);
	h[n - 2] = (uint8_t)(crc >> 8);
	h[n - 1] = (uint8_t)crc;
	CHECK_EQ(proxy_parse(2, h, n, &pi, &why), (int)n);
	CHECK_EQ(pi.tlv_flags, PROXY_TLV_SSL | PROXY_TLV_CRC_OK);
	h[20] ^= 1; /* the source address changed on the way */
	CHECK_EQ(proxy_parse(2, h, n, &pi, &why), -1);
	/* A TLV running past the header; two stray bytes at the end. */
	uint8_t over[] = {0x04, 0x00, 0x05, 0, 0};
	memcpy(body + 12, over, sizeof(over));
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x11, body, 12 + sizeof(over)), &pi, &why), -1);
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x11, body, 14), &pi, &why), -1);
	/* NOOP padding is fine. */
	uint8_t noop[] = {0x04, 0x00, 0x02, 0, 0};
	memcpy(body + 12, noop, sizeof(noop));
	CHECK_EQ(proxy_parse(2, h, v2(h, 1, 0x11, body, 12 + sizeof(noop)), &pi, &why), 33);
}
