/* PROXY protocol on a listener with enable_proxy_protocol (core/proxyproto.h
 * parses): the header is taken off the front of the byte stream as the
 * multishot recv delivers it, before TLS, WebSockets or MQTT see anything,
 * and its source address becomes the connection's peer.
 *
 * The flood filter drops packets by their source, and behind a proxy every
 * packet's source is the proxy. So a valid header allows the proxy's
 * address (its SYNs carry every client's; it must not meet the per-source
 * SYN limit), and every later strike or allow is for the client named in
 * the header, never for the proxy. A connection that does not speak the
 * protocol is struck under its own address: it is not the proxy, or a
 * proxy configured for the other version. */
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/proxyproto.h"
#include "io/conn.h"
#include "io/proxyconn.h"

_Static_assert(PROXY_HEADER_MAX <= UINT16_MAX, "conn_rare.proxy_len holds it");

/* The header is read or refused: its split part goes. */
static void proxyconn_done(struct conn *c)
{
	if (c->rare) {
		free(c->rare->proxy_buf);
		c->rare->proxy_buf = NULL;
		c->rare->proxy_len = 0;
	}
	c->proxy_await = 0;
}

static void proxyconn_refuse(struct conn *c, const char *why)
{
	proxyconn_done(c);
	conn_strike(c);
	conn_close(c, why, false);
}

static void proxyconn_apply(struct conn *c, const struct proxy_info *pi)
{
	conn_allow(c); /* the proxy's own address: see above */
	if (pi->family == PROXY_INET) {
		memset(&c->peer, 0, sizeof(c->peer));
		c->peer.sin6_family = AF_INET6;
		c->peer.sin6_addr.s6_addr[10] = 0xff;
		c->peer.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&c->peer.sin6_addr.s6_addr[12], pi->src, 4);
		c->peer.sin6_port = htons(pi->src_port);
	} else if (pi->family == PROXY_INET6) {
		memset(&c->peer, 0, sizeof(c->peer));
		c->peer.sin6_family = AF_INET6;
		memcpy(&c->peer.sin6_addr, pi->src, 16);
		c->peer.sin6_port = htons(pi->src_port);
	}
	/* PROXY_KEEP_SOCKET: v1 UNKNOWN, v2 LOCAL (the proxy's health
	 * check), AF_UNSPEC, AF_UNIX: the socket's address stays. A v2 SSL
	 * TLV says the proxy ended a TLS session; kite ends TLS itself, so
	 * such a TLV is not for it and never becomes an identity. */
	if (log_enabled(KITE_LOG_DEBUG)) {
		char peer[64];
		log_msg(KITE_LOG_DEBUG, "PROXY v%u header: client %s%s",
			pi->version, conn_peer_str(c, peer, sizeof(peer)),
			pi->family == PROXY_KEEP_SOCKET
				? " (the proxy's own connection)" : "");
	}
}

bool proxyconn_on_data(struct conn *c, const uint8_t **data, size_t *len)
{
	const uint8_t *p = *data;
	size_t n = *len, had = c->rare ? c->rare->proxy_len : 0;
	if (had) {
		size_t take = PROXY_HEADER_MAX - had;
		if (take > n)
			take = n;
		memcpy(c->rare->proxy_buf + had, p, take);
		p = c->rare->proxy_buf;
		n = had + take;
	}
	struct proxy_info pi;
	const char *why;
	int hl = proxy_parse(c->proxy_await, p, n, &pi, &why);
	if (hl < 0) {
		proxyconn_refuse(c, why);
		return false;
	}
	if (hl == 0) {
		/* A header split across receives: rare (proxies send it in
		 * one write), so the room is taken only then, and it is
		 * bounded by the parser (0 only below PROXY_HEADER_MAX). */
		struct conn_rare *rare = conn_rare(c);
		if (!rare || (!rare->proxy_buf &&
			      !(rare->proxy_buf = malloc(PROXY_HEADER_MAX)))) {
			proxyconn_refuse(c, "out of memory for the PROXY header");
			return false;
		}
		if (!had)
			memcpy(rare->proxy_buf, p, n);
		rare->proxy_len = (uint16_t)n;
		return false;
	}
	size_t used = (size_t)hl - had; /* from this receive */
	proxyconn_done(c);
	proxyconn_apply(c, &pi);
	if (pi.family != PROXY_KEEP_SOCKET && conn_blocked(c)) {
		conn_close(c, "blocked by the flood filter", false);
		return false;
	}
	/* What came with the header (a ClientHello, a CONNECT) is the
	 * stream's first bytes. */
	*data += used;
	*len -= used;
	return *len > 0;
}
