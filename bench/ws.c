/* The WebSocket layer of kite-bench (--ws): the client side of RFC 6455
 * between the MQTT code and the transport (plain TCP or TLS), so ws:// and
 * wss:// cost the generator one more framing step and nothing else.
 *
 * - Upgrade: once the transport is ready the connection sends a GET with a
 *   fixed key (the RFC's example, whose accept value is known) and
 *   `Sec-WebSocket-Protocol: mqtt`, and waits for `101` with the right
 *   Sec-WebSocket-Accept and the mqtt subprotocol; then MQTT starts.
 * - Out: every kb_wbuf_commit becomes one masked binary frame (one MQTT
 *   packet per frame, as MQTT.js and paho send). kb_wbuf_reserve leaves
 *   room for the largest header the reserved size can need, so the usual
 *   small packet is framed without moving a byte; the mask is a fresh
 *   pseudo-random key per frame (the broker pays for unmasking either way).
 * - In: server frames are unmasked. The received bytes are unframed in
 *   place in the shared scratch buffer (payload only ever moves left), so
 *   the MQTT parser sees a plain byte stream and packets may span frames.
 *   Only an incomplete frame header, or an incomplete control frame (at
 *   most 2 + 8 + 125 bytes), is kept per connection. PING gets a PONG,
 *   CLOSE ends the connection like a TCP close, a text frame, a masked
 *   frame or reserved bits fail the run. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/bench.h"

#define WS_OP_CONT 0x0
#define WS_OP_TEXT 0x1
#define WS_OP_BINARY 0x2
#define WS_OP_CLOSE 0x8
#define WS_OP_PING 0x9
#define WS_OP_PONG 0xA

/* RFC 6455 section 1.3's example key and its accept value. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/* A 101 answer is a few hundred bytes; anything this long is not one. */
#define WS_HEAD_MAX 4096u

struct kb_ws {
	uint64_t left; /* payload bytes still to come in the current data frame */
	bool open;     /* upgrade done: output is framed */
	uint8_t plen;
	uint8_t pend[KB_WS_PEND_MAX];
};

static uint32_t mask_state = 0x9e3779b9u;

static uint32_t mask_key(void)
{
	/* xorshift32: unpredictable enough for a benchmark, never 0. */
	uint32_t x = mask_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	mask_state = x;
	return x;
}

size_t kb_ws_header_room(size_t n)
{
	return n < 126 ? 6 : n < 65536 ? 8 : 14;
}

bool kb_ws_framing(const struct kb_conn *c)
{
	return c->ws && c->ws->open;
}

/* Frames the n payload bytes at f + room, where room is what
 * kb_ws_header_room gave for the reserved size; returns the frame's length,
 * which starts at f. */
size_t kb_ws_frame(uint8_t *f, size_t room, uint8_t opcode, size_t n)
{
	size_t h = kb_ws_header_room(n);
	if (h != room)
		memmove(f + h, f + room, n);
	f[0] = (uint8_t)(0x80 | opcode);
	if (n < 126) {
		f[1] = (uint8_t)(0x80 | n);
	} else if (n < 65536) {
		f[1] = 0x80 | 126;
		f[2] = (uint8_t)(n >> 8);
		f[3] = (uint8_t)n;
	} else {
		f[1] = 0x80 | 127;
		for (int i = 0; i < 8; i++)
			f[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
	}
	uint32_t k = mask_key();
	uint8_t key[4];
	memcpy(key, &k, 4);
	memcpy(f + h - 4, key, 4);
	uint8_t *p = f + h;
	size_t i = 0;
	uint64_t k8;
	memcpy(&k8, key, 4);
	memcpy((uint8_t *)&k8 + 4, key, 4);
	for (; i + 8 <= n; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		v ^= k8;
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] ^= key[i & 3];
	return h + n;
}

static void send_control(struct kb *kb, struct kb_conn *c, uint8_t opcode,
			 const uint8_t *payload, size_t n)
{
	/* Raw reservation: the frame is built here, not by the commit. */
	uint8_t *b = kb_wbuf_reserve_raw(kb, c, 6 + n);
	if (!b)
		return;
	memcpy(b + 6, payload, n);
	kb_wbuf_commit_raw(kb, c, kb_ws_frame(b, 6, opcode, n));
}

int kb_ws_start(struct kb *kb, struct kb_conn *c)
{
	if (!c->ws) {
		c->ws = calloc(1, sizeof(*c->ws));
		if (!c->ws)
			return -1;
	}
	char req[320];
	int n = snprintf(req, sizeof(req),
			 "GET /mqtt HTTP/1.1\r\n"
			 "Host: 127.0.0.1:%u\r\n"
			 "Upgrade: websocket\r\n"
			 "Connection: Upgrade\r\n"
			 "Sec-WebSocket-Key: " WS_KEY "\r\n"
			 "Sec-WebSocket-Version: 13\r\n"
			 "Sec-WebSocket-Protocol: mqtt\r\n\r\n",
			 c->port);
	uint8_t *b = kb_wbuf_reserve_raw(kb, c, (size_t)n);
	if (!b)
		return -1;
	memcpy(b, req, (size_t)n);
	kb_wbuf_commit_raw(kb, c, (size_t)n);
	return 0;
}

void kb_ws_free(struct kb_conn *c)
{
	free(c->ws);
	c->ws = NULL;
}

/* The value of header `name` in the head [h, h+n), or NULL. */
static const char *head_value(const char *h, const char *name, size_t *vlen)
{
	size_t nl = strlen(name);
	for (const char *l = strstr(h, "\r\n"); l && l[2] != '\r';
	     l = strstr(l + 2, "\r\n")) {
		const char *s = l + 2;
		if (strncasecmp(s, name, nl) || s[nl] != ':')
			continue;
		const char *v = s + nl + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		const char *e = strstr(v, "\r\n");
		while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		*vlen = (size_t)(e - v);
		return v;
	}
	return NULL;
}

static bool value_is(const char *v, size_t n, const char *want)
{
	return v && n == strlen(want) && !strncasecmp(v, want, n);
}

int kb_ws_upgrade_input(struct kb *kb, struct kb_conn *c, const uint8_t *buf,
			size_t len, size_t *used)
{
	*used = 0;
	/* The head is text; look for its end without running off buf. */
	const uint8_t *end = NULL;
	for (size_t i = 0; i + 4 <= len; i++)
		if (!memcmp(buf + i, "\r\n\r\n", 4)) {
			end = buf + i + 4;
			break;
		}
	if (!end) {
		if (len >= WS_HEAD_MAX) {
			kb_error(kb, "WebSocket upgrade: answer head over %u "
				     "bytes", WS_HEAD_MAX);
			return -1;
		}
		return 0;
	}
	size_t hn = (size_t)(end - buf);
	char *h = malloc(hn + 1);
	if (!h)
		return -1;
	memcpy(h, buf, hn);
	h[hn] = 0;
	int rc = -1;
	size_t vl = 0;
	const char *v;
	const char *eol = strstr(h, "\r\n");
	if (strncmp(h, "HTTP/1.1 101", 12) != 0) {
		kb_error(kb, "WebSocket upgrade refused: %.*s",
			 (int)(eol - h > 100 ? 100 : eol - h), h);
	} else if (v = head_value(h, "Sec-WebSocket-Accept", &vl),
		   !value_is(v, vl, WS_ACCEPT)) {
		kb_error(kb, "WebSocket upgrade: Sec-WebSocket-Accept %.*s, "
			     "not " WS_ACCEPT,
			 v ? (int)(vl > 60 ? 60 : vl) : 9, v ? v : "(missing)");
	} else if (v = head_value(h, "Sec-WebSocket-Protocol", &vl),
		   !value_is(v, vl, "mqtt")) {
		kb_error(kb, "WebSocket upgrade: subprotocol %.*s, not mqtt",
			 v ? (int)(vl > 60 ? 60 : vl) : 9, v ? v : "(missing)");
	} else {
		rc = 1;
		*used = hn;
		c->ws->open = true;
		c->ws->left = 0;
		c->ws->plen = 0;
	}
	free(h);
	return rc;
}

size_t kb_ws_take_pending(struct kb_conn *c, uint8_t *dst)
{
	size_t n = c->ws->plen;
	memcpy(dst, c->ws->pend, n);
	c->ws->plen = 0;
	return n;
}

ssize_t kb_ws_unframe(struct kb *kb, struct kb_conn *c, uint8_t *buf,
		      size_t len)
{
	struct kb_ws *w = c->ws;
	size_t in = 0, out = 0;
	while (in < len) {
		if (w->left) {
			size_t n = len - in;
			if (n > w->left)
				n = (size_t)w->left;
			if (out != in)
				memmove(buf + out, buf + in, n);
			out += n;
			in += n;
			w->left -= n;
			continue;
		}
		const uint8_t *p = buf + in;
		size_t avail = len - in;
		if (avail < 2)
			goto stash;
		uint8_t op = p[0] & 0x0f;
		if (p[1] & 0x80) {
			kb->c.protocol_errors++;
			kb_error(kb, "WebSocket: masked frame from the server");
			return -1;
		}
		if (p[0] & 0x70) {
			kb->c.protocol_errors++;
			kb_error(kb, "WebSocket: reserved bits set (0x%02x)", p[0]);
			return -1;
		}
		uint8_t l7 = p[1] & 0x7f;
		size_t hl = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
		if (avail < hl)
			goto stash;
		uint64_t plen = l7;
		if (l7 == 126)
			plen = (uint64_t)p[2] << 8 | p[3];
		else if (l7 == 127)
			for (int i = 0; i < 8; i++)
				plen = plen << 8 | p[2 + i];
		if (op >= 0x8) {
			if (plen > 125 || !(p[0] & 0x80)) {
				kb->c.protocol_errors++;
				kb_error(kb, "WebSocket: bad control frame");
				return -1;
			}
			if (avail < hl + plen)
				goto stash;
			if (op == WS_OP_CLOSE)
				return -2;
			if (op == WS_OP_PING)
				send_control(kb, c, WS_OP_PONG, p + hl, plen);
			else if (op != WS_OP_PONG) {
				kb->c.protocol_errors++;
				kb_error(kb, "WebSocket: opcode 0x%x", op);
				return -1;
			}
			in += hl + (size_t)plen;
			continue;
		}
		if (op != WS_OP_BINARY && op != WS_OP_CONT) {
			kb->c.protocol_errors++;
			kb_error(kb, "WebSocket: %s frame (MQTT is binary)",
				 op == WS_OP_TEXT ? "text" : "reserved-opcode");
			return -1;
		}
		in += hl;
		w->left = plen;
	}
	return (ssize_t)out;
stash:
	/* An incomplete header or control frame is never more than
	 * KB_WS_PEND_MAX bytes: everything above is checked first. */
	w->plen = (uint8_t)(len - in);
	memcpy(w->pend, buf + in, len - in);
	return (ssize_t)out;
}
