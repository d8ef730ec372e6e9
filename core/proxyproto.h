/* The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2):
 * the header a load balancer puts before a client's bytes to say whose
 * connection it is. Bytes in, an address out: no socket here.
 *
 * A listener with `enable_proxy_protocol 1|2` expects exactly that
 * version first on every connection; anything else closes it. */
#ifndef KITE_PROXYPROTO_H
#define KITE_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>

/* v1: "PROXY UNKNOWN <39> <39> 65535 65535\r\n", the longest line the
 * spec allows (107 bytes with CRLF). */
#define PROXY_V1_MAX 107
/* v2: 16 fixed bytes, then len bytes of addresses and TLVs. The
 * addresses take at most 216 (AF_UNIX); the rest is HAProxy's TLVs
 * (ALPN, authority, unique id up to 128, SSL with a client CN). Bigger
 * headers are refused rather than buffered: a header sits in a
 * connection's memory before it has proved anything. */
#define PROXY_V2_LEN_MAX 1024
#define PROXY_V2_MAX (16 + PROXY_V2_LEN_MAX)
/* The most any header of either version can take. */
#define PROXY_HEADER_MAX PROXY_V2_MAX

enum proxy_family {
	/* Keep the socket's own address: v1 UNKNOWN, v2 LOCAL (the proxy's
	 * own health check), v2 AF_UNSPEC, and v2 AF_UNIX (a path is no
	 * address kite can log, limit or filter by). */
	PROXY_KEEP_SOCKET,
	PROXY_INET,  /* src/dst hold the IPv4 address in their first 4 bytes */
	PROXY_INET6,
};

/* v2 TLVs kite notices but does not act on (see PROXY_TLV_*). */
enum proxy_tlv_flag {
	/* PP2_TYPE_SSL: the proxy ended TLS. kite ends TLS itself, so a
	 * client certificate named here is not one kite verified: never used
	 * as an identity. */
	PROXY_TLV_SSL = 1 << 0,
	/* PP2_TYPE_CRC32C was present and matched (a mismatch is an error). */
	PROXY_TLV_CRC_OK = 1 << 1,
};

struct proxy_info {
	enum proxy_family family;
	uint8_t src[16], dst[16];	/* network byte order */
	uint16_t src_port, dst_port;	/* host byte order */
	uint8_t version;		/* 1 or 2 */
	uint8_t tlv_flags;		/* enum proxy_tlv_flag */
};

/* Parses the header of `version` (1 or 2) at the start of buf[len].
 * Returns its length (> 0) with *out filled, 0 when more bytes are
 * needed and what came so far can still begin a valid header (never
 * past PROXY_HEADER_MAX bytes), or -1 with *why set (a static string)
 * when it cannot be one. Bytes after the header are not looked at: they
 * belong to TLS or MQTT. */
int proxy_parse(int version, const uint8_t *buf, size_t len,
		struct proxy_info *out, const char **why);

#endif
