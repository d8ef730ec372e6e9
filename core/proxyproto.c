/* The PROXY protocol header, versions 1 and 2 (core/proxyproto.h). */
#include "core/proxyproto.h"

#include <arpa/inet.h>
#include <string.h>

#include "core/crc32c.h"

static const char v1_sig[] = "PROXY ";
static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
				   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_AF_UNSPEC 0x0
#define V2_AF_INET 0x1
#define V2_AF_INET6 0x2
#define V2_AF_UNIX 0x3
#define V2_STREAM 0x1
#define V2_ADDR_INET 12
#define V2_ADDR_INET6 36
#define V2_ADDR_UNIX 216
#define V2_TLV_CRC32C 0x03
#define V2_TLV_SSL 0x20

_Static_assert(V2_ADDR_UNIX <= PROXY_V2_LEN_MAX,
	       "the largest address block must fit the cap");
_Static_assert(PROXY_V1_MAX <= PROXY_HEADER_MAX, "v1 fits the buffer");

static int fail(const char **why, const char *reason)
{
	*why = reason;
	return -1;
}

/* ---- version 1: one text line --------------------------------------- */

/* Decimal 0..65535, no sign, no leading zero. */
static int v1_port(const char *s, size_t n, uint16_t *out)
{
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	uint32_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint32_t)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*out = (uint16_t)v;
	return 0;
}

static int v1_addr(int af, const char *s, size_t n, uint8_t out[16])
{
	char tmp[INET6_ADDRSTRLEN];
	if (n == 0 || n >= sizeof(tmp))
		return -1;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	return inet_pton(af, tmp, out) == 1 ? 0 : -1;
}

/* Splits line[len] at single spaces into at most max tokens; -1 on an
 * empty token (two spaces, or a space at either end). */
static int v1_split(const char *line, size_t len, const char **tok,
		    size_t *tlen, int max)
{
	int n = 0;
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && line[i] != ' ')
			continue;
		if (i == start || n == max)
			return -1;
		tok[n] = line + start;
		tlen[n++] = i - start;
		start = i + 1;
	}
	return n;
}

static int v1_line(const char *line, size_t len, struct proxy_info *out,
		   const char **why)
{
	if (len >= 7 && !memcmp(line, "UNKNOWN", 7) &&
	    (len == 7 || line[7] == ' ')) {
		out->family = PROXY_KEEP_SOCKET; /* the rest is to be ignored */
		return 0;
	}
	const char *tok[5];
	size_t tlen[5];
	if (v1_split(line, len, tok, tlen, 5) != 5)
		return fail(why, "PROXY v1: not 'TCP4|TCP6 SRC DST SPORT DPORT'");
	int af;
	if (tlen[0] == 4 && !memcmp(tok[0], "TCP4", 4)) {
		af = AF_INET;
		out->family = PROXY_INET;
	} else if (tlen[0] == 4 && !memcmp(tok[0], "TCP6", 4)) {
		af = AF_INET6;
		out->family = PROXY_INET6;
	} else {
		return fail(why, "PROXY v1: unknown protocol (not TCP4, TCP6 or UNKNOWN)");
	}
	if (v1_addr(af, tok[1], tlen[1], out->src) < 0 ||
	    v1_addr(af, tok[2], tlen[2], out->dst) < 0)
		return fail(why, "PROXY v1: bad address");
	if (v1_port(tok[3], tlen[3], &out->src_port) < 0 ||
	    v1_port(tok[4], tlen[4], &out->dst_port) < 0)
		return fail(why, "PROXY v1: bad port");
	return 0;
}

static int parse_v1(const uint8_t *buf, size_t len, struct proxy_info *out,
		    const char **why)
{
	size_t sig = sizeof(v1_sig) - 1;
	if (memcmp(buf, v1_sig, len < sig ? len : sig))
		return fail(why, "not a PROXY protocol v1 header");
	size_t scan = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
	for (size_t i = sig; i < scan; i++) {
		if (buf[i] == '\r') {
			if (i + 1 == scan)
				break; /* the LF may be next */
			if (buf[i + 1] != '\n')
				return fail(why, "PROXY v1: CR without LF");
			if (v1_line((const char *)buf + sig, i - sig, out, why) < 0)
				return -1;
			out->version = 1;
			return (int)i + 2;
		}
		if (buf[i] < 0x20 || buf[i] > 0x7e)
			return fail(why, "PROXY v1: a byte that is not printable ASCII");
	}
	if (len >= PROXY_V1_MAX)
		return fail(why, "PROXY v1: no CRLF within 107 bytes");
	return 0;
}

/* ---- version 2: binary ---------------------------------------------- */

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* The header checksum covers the whole header with the checksum's own
 * four bytes taken as zero. */
static int v2_crc_ok(const uint8_t *hdr, size_t total, size_t at)
{
	static const uint8_t zero[4];
	uint32_t want = (uint32_t)hdr[at] << 24 | (uint32_t)hdr[at + 1] << 16 |
			(uint32_t)hdr[at + 2] << 8 | hdr[at + 3];
	uint32_t crc = crc32c(0, hdr, at);
	crc = crc32c(crc, zero, 4);
	crc = crc32c(crc, hdr + at + 4, total - at - 4);
	return crc == want;
}

/* The TLVs after the addresses must tile the rest exactly. */
static int v2_tlvs(const uint8_t *hdr, size_t total, size_t off,
		   struct proxy_info *out, const char **why)
{
	while (off < total) {
		if (total - off < 3)
			return fail(why, "PROXY v2: truncated TLV");
		uint8_t type = hdr[off];
		size_t n = be16(hdr + off + 1);
		if (n > total - off - 3)
			return fail(why, "PROXY v2: TLV longer than the header");
		if (type == V2_TLV_SSL)
			out->tlv_flags |= PROXY_TLV_SSL;
		if (type == V2_TLV_CRC32C) {
			if (n != 4 || !v2_crc_ok(hdr, total, off + 3))
				return fail(why, "PROXY v2: CRC32C mismatch");
			out->tlv_flags |= PROXY_TLV_CRC_OK;
		}
		off += 3 + n;
	}
	return 0;
}

static int v2_addresses(const uint8_t *hdr, size_t hlen,
			struct proxy_info *out, const char **why)
{
	uint8_t fam = hdr[13] >> 4, proto = hdr[13] & 0x0f;
	const uint8_t *a = hdr + 16;
	size_t need;
	switch (fam) {
	case V2_AF_UNSPEC:
		out->family = PROXY_KEEP_SOCKET; /* addresses to be ignored */
		return 0;
	case V2_AF_INET:
		need = V2_ADDR_INET;
		break;
	case V2_AF_INET6:
		need = V2_ADDR_INET6;
		break;
	case V2_AF_UNIX:
		need = V2_ADDR_UNIX;
		break;
	default:
		return fail(why, "PROXY v2: unknown address family");
	}
	if (proto != V2_STREAM)
		return fail(why, "PROXY v2: not a stream connection");
	if (hlen < need)
		return fail(why, "PROXY v2: address block shorter than its family");
	if (fam == V2_AF_INET) {
		out->family = PROXY_INET;
		memcpy(out->src, a, 4);
		memcpy(out->dst, a + 4, 4);
		out->src_port = be16(a + 8);
		out->dst_port = be16(a + 10);
	} else if (fam == V2_AF_INET6) {
		out->family = PROXY_INET6;
		memcpy(out->src, a, 16);
		memcpy(out->dst, a + 16, 16);
		out->src_port = be16(a + 32);
		out->dst_port = be16(a + 34);
	} else {
		out->family = PROXY_KEEP_SOCKET;
	}
	return v2_tlvs(hdr, 16 + hlen, 16 + need, out, why);
}

static int parse_v2(const uint8_t *buf, size_t len, struct proxy_info *out,
		    const char **why)
{
	if (memcmp(buf, v2_sig, len < sizeof(v2_sig) ? len : sizeof(v2_sig)))
		return fail(why, "not a PROXY protocol v2 header");
	if (len > 12 && (buf[12] >> 4 != 2 || (buf[12] & 0x0f) > V2_CMD_PROXY))
		return fail(why, "PROXY v2: unknown version or command");
	if (len < 16)
		return 0;
	size_t hlen = be16(buf + 14);
	if (hlen > PROXY_V2_LEN_MAX)
		return fail(why, "PROXY v2: header longer than 1040 bytes");
	if (len < 16 + hlen)
		return 0;
	out->version = 2;
	if ((buf[12] & 0x0f) == V2_CMD_LOCAL) {
		/* The proxy speaking for itself (a health check): its own
		 * address is the right one. */
		out->family = PROXY_KEEP_SOCKET;
		return (int)(16 + hlen);
	}
	if (v2_addresses(buf, hlen, out, why) < 0)
		return -1;
	return (int)(16 + hlen);
}

int proxy_parse(int version, const uint8_t *buf, size_t len,
		struct proxy_info *out, const char **why)
{
	memset(out, 0, sizeof(*out));
	*why = NULL;
	if (version == 1)
		return parse_v1(buf, len, out, why);
	if (version == 2)
		return parse_v2(buf, len, out, why);
	return fail(why, "PROXY protocol: unknown version");
}
