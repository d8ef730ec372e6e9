/* MQTT over WebSockets: the upgrade request by hand, frames by wslay. */
#include <assert.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <wslay/wslay.h>

#include "ws/ws.h"

/* RFC 6455 1.3: appended to the client's key before hashing. */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* A request target longer than this is refused (414). */
#define WS_TARGET_MAX 2048

struct wbuf {
	uint8_t *data;
	size_t off, len, cap; /* bytes [off, len) are pending */
};

static int wbuf_append(struct wbuf *b, const void *p, size_t n)
{
	if (b->off == b->len)
		b->off = b->len = 0;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *d = realloc(b->data, cap);
		if (!d)
			return -1;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

static void wbuf_free(struct wbuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

enum ws_state {
	WS_HTTP, /* reading the request head */
	WS_OPEN, /* upgraded: frames */
	WS_DONE, /* answered over HTTP, or failed: input ignored */
};

struct ws_conn {
	wslay_event_context_ptr ev; /* from the upgrade on */
	struct ws_limits lim;
	ws_data_cb cb;
	void *arg;
	uint8_t state;
	bool msg_binary;  /* the data message being received is binary */
	bool frame_data;  /* the frame being received carries MQTT bytes */
	bool stopped;	  /* the data callback asked to stop */
	bool frame_error; /* wslay's frame parser refused the input */
	bool send_failed; /* out of memory while framing */
	uint16_t close_code;
	int http_status;
	const char *why;
	const uint8_t *in; /* input wslay's recv callback reads from */
	size_t in_len;
	struct wbuf req;
	struct wbuf out;
	char path[256];
	char subprotocol[16];
};

/* ---- the trace (websockets_log_level) -------------------------------------- */

const char *ws_log_name(unsigned level)
{
	switch (level) {
	case WS_LOG_ERR: return "E";
	case WS_LOG_WARN: return "W";
	case WS_LOG_NOTICE: return "N";
	case WS_LOG_INFO: return "I";
	case WS_LOG_DEBUG: return "D";
	case WS_LOG_PARSER: return "PARSER";
	case WS_LOG_HEADER: return "HEADER";
	case WS_LOG_EXT: return "EXT";
	case WS_LOG_CLIENT: return "CLIENT";
	case WS_LOG_LATENCY: return "LATENCY";
	default: return "?";
	}
}

static bool ws_logs(const struct ws_conn *w, unsigned level)
{
	return w->lim.log && (w->lim.log_mask & level);
}

static void ws_log(const struct ws_conn *w, unsigned level, const char *fmt,
		   ...) __attribute__((format(printf, 3, 4)));

static void ws_log(const struct ws_conn *w, unsigned level, const char *fmt,
		   ...)
{
	if (!ws_logs(w, level))
		return;
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	w->lim.log(w->arg, level, line);
}

/* ---- the upgrade request ------------------------------------------------- */

static bool is_tchar(uint8_t c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	       (c >= 'A' && c <= 'Z') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool span_ieq_prefix(const uint8_t *p, const char *s)
{
	for (size_t i = 0; s[i]; i++)
		if (tolower(p[i]) != s[i])
			return false;
	return true;
}

static bool span_ieq(const uint8_t *p, size_t n, const char *s)
{
	return strlen(s) == n && !strncasecmp((const char *)p, s, n);
}

/* Whether a comma-separated header value lists tok (case-insensitive). */
static bool list_has(const uint8_t *v, size_t n, const char *tok)
{
	size_t i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e > s && span_ieq(v + s, e - s, tok))
			return true;
	}
	return false;
}

static bool b64_char(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/* RFC 6455 4.1: the key is 16 random bytes in base64: 22 characters and
 * "==" (the last character carries 4 bits, so only some are valid). */
static bool key_valid(const uint8_t *k, size_t n)
{
	if (n != 24 || k[22] != '=' || k[23] != '=')
		return false;
	for (size_t i = 0; i < 22; i++)
		if (!b64_char(k[i]))
			return false;
	return strchr("AQgw", k[21]) != NULL;
}

static void key_accept(const uint8_t *key, char out[32])
{
	uint8_t in[24 + sizeof(ws_guid) - 1];
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	memcpy(in, key, 24);
	memcpy(in + 24, ws_guid, sizeof(ws_guid) - 1);
	EVP_Digest(in, sizeof(in), md, &mdlen, EVP_sha1(), NULL);
	assert(mdlen == 20);
	EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen); /* 28 + NUL */
}

/* The target of a file GET as a path below the served directory. */
static int target_path(const uint8_t *t, size_t n, struct ws_http_req *req)
{
	char *out = req->path;
	size_t o = 0, seg = 0;
	if (n == 0 || t[0] != '/') {
		req->why = "request target is not an absolute path";
		return 400;
	}
	for (size_t i = 1; i <= n; i++) {
		uint8_t c = i < n ? t[i] : '/';
		if (i < n && (c == '?' || c == '#')) {
			n = i;
			c = '/';
		}
		if (c == '%' && i + 2 < n) {
			int h = OPENSSL_hexchar2int(t[i + 1]),
			    l = OPENSSL_hexchar2int(t[i + 2]);
			if (h < 0 || l < 0) {
				req->why = "bad percent-encoding in the path";
				return 400;
			}
			c = (uint8_t)(h << 4 | l);
			i += 2;
			if (c == '/') {
				req->why = "encoded '/' in the path";
				return 403;
			}
		} else if (c == '%') {
			req->why = "bad percent-encoding in the path";
			return 400;
		}
		if (c == 0 || c == '\\') {
			req->why = "NUL or backslash in the path";
			return 400;
		}
		if (c != '/') {
			if (o + 1 >= sizeof(req->path) - 11) {
				req->why = "path too long";
				return 414;
			}
			out[o++] = (char)c;
			continue;
		}
		/* end of a segment: out[seg..o) */
		size_t len = o - seg;
		if ((len == 1 && out[seg] == '.') ||
		    (len == 2 && out[seg] == '.' && out[seg + 1] == '.')) {
			req->why = "'.' or '..' in the path";
			return 403;
		}
		if (len == 0 && i < n) {
			req->why = "empty segment in the path";
			return 400;
		}
		if (i < n)
			out[o++] = '/';
		seg = o;
		if (i >= n)
			break;
	}
	if (o == 0 || out[o - 1] == '/') {
		memcpy(out + o, "index.html", 10);
		o += 10;
	}
	out[o] = '\0';
	return 200;
}

struct hdrs {
	const uint8_t *host, *upgrade, *connection, *key, *version;
	size_t host_n, upgrade_n, connection_n, key_n, version_n;
	unsigned keys;
	bool want_mqtt, want_mqttv31;
};

/* One header line [p, p+n) without its CRLF. 0, or an error status. */
static int header_line(const uint8_t *p, size_t n, struct hdrs *h,
		       struct ws_http_req *req)
{
	size_t i = 0;
	while (i < n && is_tchar(p[i]))
		i++;
	if (i == 0 || i == n || p[i] != ':') {
		req->why = n && (p[0] == ' ' || p[0] == '\t')
				   ? "folded header line"
				   : "malformed header line";
		return 400;
	}
	const uint8_t *name = p;
	size_t name_n = i++;
	while (i < n && (p[i] == ' ' || p[i] == '\t'))
		i++;
	size_t e = n;
	while (e > i && (p[e - 1] == ' ' || p[e - 1] == '\t'))
		e--;
	for (size_t k = i; k < e; k++) {
		if (p[k] < 0x20 && p[k] != '\t') {
			req->why = "control character in a header value";
			return 400;
		}
	}
	const uint8_t *v = p + i;
	size_t vn = e - i;
	if (span_ieq(name, name_n, "host")) {
		h->host = v;
		h->host_n = vn;
	} else if (span_ieq(name, name_n, "upgrade")) {
		h->upgrade = v;
		h->upgrade_n = vn;
	} else if (span_ieq(name, name_n, "connection")) {
		h->connection = v;
		h->connection_n = vn;
	} else if (span_ieq(name, name_n, "sec-websocket-key")) {
		h->key = v;
		h->key_n = vn;
		h->keys++;
	} else if (span_ieq(name, name_n, "sec-websocket-version")) {
		h->version = v;
		h->version_n = vn;
	} else if (span_ieq(name, name_n, "sec-websocket-protocol")) {
		h->want_mqtt |= list_has(v, vn, "mqtt");
		h->want_mqttv31 |= list_has(v, vn, "mqttv3.1");
	}
	return 0;
}

/* The request head is complete in buf[0, end): check it. */
static int request_check(const uint8_t *buf, size_t end, bool http_files,
			 struct ws_http_req *req)
{
	const uint8_t *eol = memchr(buf, '\r', end);
	size_t ln = (size_t)(eol - buf);
	size_t i = 0;
	while (i < ln && is_tchar(buf[i]))
		i++;
	const uint8_t *method = buf;
	size_t method_n = i;
	if (!method_n || i >= ln || buf[i] != ' ') {
		req->why = "malformed request line";
		return 400;
	}
	const uint8_t *target = buf + ++i;
	while (i < ln && buf[i] > 0x20 && buf[i] < 0x7f)
		i++;
	size_t target_n = (size_t)(buf + i - target);
	if (!target_n || i >= ln || buf[i] != ' ') {
		req->why = "malformed request line";
		return 400;
	}
	if (target_n > WS_TARGET_MAX) {
		req->why = "request target too long";
		return 414;
	}
	i++;
	bool http11 = span_ieq(buf + i, ln - i, "HTTP/1.1");
	if (!http11 && !span_ieq(buf + i, ln - i, "HTTP/1.0")) {
		req->why = "not HTTP/1.0 or HTTP/1.1";
		return ln - i == 8 && !memcmp(buf + i, "HTTP/", 5) ? 505 : 400;
	}
	struct hdrs h = {0};
	for (size_t p = ln + 2; p < end - 2;) {
		const uint8_t *e = memchr(buf + p, '\r', end - p);
		int st = header_line(buf + p, (size_t)(e - (buf + p)), &h, req);
		if (st)
			return st;
		p = (size_t)(e - buf) + 2;
	}
	if (!span_ieq(method, method_n, "GET")) {
		req->why = "only GET is served";
		return 405;
	}
	bool upgrade = h.upgrade && list_has(h.upgrade, h.upgrade_n, "websocket");
	if (!upgrade) {
		if (!http_files) {
			req->why = "not a WebSocket upgrade (and no http_dir)";
			return 426;
		}
		return target_path(target, target_n, req);
	}
	if (!http11 || !h.host) {
		req->why = http11 ? "no Host header" : "upgrade needs HTTP/1.1";
		return 400;
	}
	if (!h.connection || !list_has(h.connection, h.connection_n, "upgrade")) {
		req->why = "Connection header does not say Upgrade";
		return 400;
	}
	if (!h.version || !span_ieq(h.version, h.version_n, "13")) {
		req->why = "unsupported Sec-WebSocket-Version (13 is)";
		return 426;
	}
	if (h.keys != 1 || !key_valid(h.key, h.key_n)) {
		req->why = "missing or invalid Sec-WebSocket-Key";
		return 400;
	}
	if (!h.want_mqtt && !h.want_mqttv31) {
		req->why = "the mqtt subprotocol was not offered";
		return 400;
	}
	snprintf(req->subprotocol, sizeof(req->subprotocol), "%s",
		 h.want_mqtt ? "mqtt" : "mqttv3.1");
	key_accept(h.key, req->accept);
	return 101;
}

int ws_http_parse(const uint8_t *buf, size_t len, uint32_t head_max,
		  bool http_files, struct ws_http_req *req)
{
	memset(req, 0, sizeof(*req));
	size_t n = len < head_max ? len : head_max;
	/* Line endings are CRLF and nothing else; no NUL anywhere. */
	for (size_t i = 0; i < n; i++) {
		bool bad = buf[i] == 0 ||
			   (buf[i] == '\n' && (i == 0 || buf[i - 1] != '\r')) ||
			   (buf[i] == '\r' && i + 1 < n && buf[i + 1] != '\n');
		if (bad) {
			req->status = 400;
			req->why = "NUL, bare CR or bare LF in the request";
			return 1;
		}
		if (i >= 3 && !memcmp(buf + i - 3, "\r\n\r\n", 4)) {
			req->head_len = i + 1;
			req->status = request_check(buf, i + 1, http_files, req);
			return 1;
		}
		if (i == 1 && buf[0] == '\r') {
			req->status = 400;
			req->why = "empty request line";
			return 1;
		}
	}
	if (len >= head_max) {
		req->status = 431;
		req->why = "request head larger than websockets_headers_size";
		return 1;
	}
	return 0;
}

/* A line of the client's request for the log: at most 200 bytes of it,
 * what is not printable ASCII shown as '?'. */
static void ws_log_head_line(const struct ws_conn *w, unsigned level,
			     const char *what, const uint8_t *p, size_t n)
{
	char safe[201];
	size_t k = n < sizeof(safe) - 1 ? n : sizeof(safe) - 1;
	for (size_t i = 0; i < k; i++)
		safe[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	safe[k] = '\0';
	ws_log(w, level, "%s%s%s", what, safe, n > k ? " ..." : "");
}

/* The request head as received: each line at HEADER, the extensions the
 * client offered at EXT (kite negotiates none: MQTT needs none). */
static void ws_log_head(const struct ws_conn *w, const uint8_t *buf,
			size_t len)
{
	if (!ws_logs(w, WS_LOG_HEADER | WS_LOG_EXT))
		return;
	static const char ext[] = "sec-websocket-extensions:";
	for (size_t p = 0; p < len;) {
		const uint8_t *e = memchr(buf + p, '\n', len - p);
		size_t n = e ? (size_t)(e - (buf + p)) : len - p;
		size_t ln = n && buf[p + n - 1] == '\r' ? n - 1 : n;
		if (!ln)
			break; /* the empty line ends the head */
		ws_log_head_line(w, WS_LOG_HEADER, "request: ", buf + p, ln);
		if (ln >= sizeof(ext) - 1 && span_ieq_prefix(buf + p, ext)) {
			size_t v = p + sizeof(ext) - 1;
			while (v < p + ln && (buf[v] == ' ' || buf[v] == '\t'))
				v++;
			ws_log_head_line(w, WS_LOG_EXT,
					 "extensions offered, none used: ",
					 buf + v, p + ln - v);
		}
		p += n + 1;
	}
}

/* ---- wslay callbacks ----------------------------------------------------- */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
		       int flags, void *user)
{
	struct ws_conn *w = user;
	if (!w->in_len) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	size_t n = len < w->in_len ? len : w->in_len;
	memcpy(buf, w->in, n);
	w->in += n;
	w->in_len -= n;
	return (ssize_t)n;
}

/* Everything wslay frames lands in our output at once: it never holds a
 * half-sent frame, so ordering is simply the order of the calls. */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
		       size_t len, int flags, void *user)
{
	struct ws_conn *w = user;
	if (wbuf_append(&w->out, data, len) < 0) {
		w->send_failed = true;
		wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
		return -1;
	}
	return (ssize_t)len;
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
		      void *user)
{
	memset(buf, 0, len); /* a server does not mask */
	return 0;
}

static const char *opcode_name(uint8_t op)
{
	switch (op) {
	case WSLAY_CONTINUATION_FRAME: return "continuation";
	case WSLAY_TEXT_FRAME: return "text";
	case WSLAY_BINARY_FRAME: return "binary";
	case WSLAY_CONNECTION_CLOSE: return "close";
	case WSLAY_PING: return "ping";
	case WSLAY_PONG: return "pong";
	default: return "reserved";
	}
}

static void frame_start_cb(wslay_event_context_ptr ctx,
			   const struct wslay_event_on_frame_recv_start_arg *a,
			   void *user)
{
	struct ws_conn *w = user;
	ws_log(w, WS_LOG_PARSER, "frame: %s (opcode %u)%s, %llu bytes",
	       opcode_name(a->opcode), a->opcode, a->fin ? ", final" : "",
	       (unsigned long long)a->payload_length);
	if (a->opcode == WSLAY_PING)
		ws_log(w, WS_LOG_DEBUG, "ping, %llu bytes: answered with a pong",
		       (unsigned long long)a->payload_length);
	if (a->opcode == WSLAY_BINARY_FRAME || a->opcode == WSLAY_TEXT_FRAME)
		w->msg_binary = a->opcode == WSLAY_BINARY_FRAME;
	w->frame_data = a->opcode == WSLAY_BINARY_FRAME ||
			(a->opcode == WSLAY_CONTINUATION_FRAME && w->msg_binary);
	if (a->opcode == WSLAY_TEXT_FRAME) {
		/* MQTT 5.0 section 6: MQTT goes in binary frames only. */
		w->why = "text frame (MQTT needs binary frames)";
		wslay_event_queue_close(ctx, WS_CLOSE_UNSUPPORTED_DATA, NULL, 0);
		wslay_event_shutdown_read(ctx);
	}
}

static void frame_chunk_cb(wslay_event_context_ptr ctx,
			   const struct wslay_event_on_frame_recv_chunk_arg *a,
			   void *user)
{
	struct ws_conn *w = user;
	if (!w->frame_data || w->stopped || !a->data_length)
		return;
	if (!w->cb(w->arg, a->data, a->data_length)) {
		w->stopped = true;
		wslay_event_shutdown_read(ctx);
	}
}

static const struct wslay_event_callbacks ws_callbacks = {
	.recv_callback = recv_cb,
	.send_callback = send_cb,
	.genmask_callback = genmask_cb,
	.on_frame_recv_start_callback = frame_start_cb,
	.on_frame_recv_chunk_callback = frame_chunk_cb,
};

/* ---- the connection -------------------------------------------------------- */

struct ws_conn *ws_conn_new(const struct ws_limits *lim, ws_data_cb cb,
			    void *arg)
{
	assert(lim && cb && lim->head_max > 0);
	struct ws_conn *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->lim = *lim;
	w->cb = cb;
	w->arg = arg;
	w->state = WS_HTTP;
	return w;
}

void ws_conn_free(struct ws_conn *w)
{
	if (!w)
		return;
	if (w->ev)
		wslay_event_context_free(w->ev);
	wbuf_free(&w->req);
	wbuf_free(&w->out);
	free(w);
}

bool ws_is_open(const struct ws_conn *w)
{
	return w->ev != NULL;
}

uint16_t ws_close_code(const struct ws_conn *w)
{
	return w->close_code;
}

const char *ws_error(const struct ws_conn *w)
{
	return w->why ? w->why : "WebSocket error";
}

int ws_http_status(const struct ws_conn *w)
{
	return w->http_status;
}

const char *ws_http_path(const struct ws_conn *w)
{
	return w->path;
}

const char *ws_subprotocol(const struct ws_conn *w)
{
	return w->subprotocol;
}

uint16_t ws_close_code_received(const struct ws_conn *w)
{
	return w->ev && wslay_event_get_close_received(w->ev)
		       ? wslay_event_get_status_code_received(w->ev)
		       : 0;
}

int ws_out_raw(struct ws_conn *w, const void *data, size_t len)
{
	return wbuf_append(&w->out, data, len);
}

static const char *status_text(int status)
{
	switch (status) {
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 414: return "URI Too Long";
	case 426: return "Upgrade Required";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

int ws_out_http_error(struct ws_conn *w, int status, const char *why)
{
	char buf[512];
	const char *extra = status == 405 ? "Allow: GET\r\n"
			    : status == 426 ? "Upgrade: websocket\r\n"
					      "Sec-WebSocket-Version: 13\r\n"
					    : "";
	int n = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n%s\r\n%s\n",
			 status, status_text(status), strlen(why) + 1, extra, why);
	assert(n > 0 && (size_t)n < sizeof(buf));
	w->http_status = status;
	return ws_out_raw(w, buf, (size_t)n);
}

static int ws_upgrade(struct ws_conn *w, const struct ws_http_req *req)
{
	if (wslay_event_context_server_init(&w->ev, &ws_callbacks, w))
		return -1;
	wslay_event_config_set_no_buffering(w->ev, 1);
	wslay_event_config_set_max_recv_msg_length(w->ev, w->lim.frame_max);
	char buf[256];
	int n = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 101 Switching Protocols\r\n"
			 "Upgrade: websocket\r\nConnection: Upgrade\r\n"
			 "Sec-WebSocket-Accept: %s\r\n"
			 "Sec-WebSocket-Protocol: %s\r\n\r\n",
			 req->accept, req->subprotocol);
	assert(n > 0 && (size_t)n < sizeof(buf));
	w->http_status = 101;
	w->state = WS_OPEN;
	memcpy(w->subprotocol, req->subprotocol, sizeof(w->subprotocol));
	return ws_out_raw(w, buf, (size_t)n);
}

/* Serialises what wslay queued (pongs, close frames, data). */
static void ws_pump(struct ws_conn *w)
{
	if (!w->frame_error && !w->send_failed &&
	    wslay_event_send(w->ev) != 0 && !w->send_failed)
		w->send_failed = true;
}

/* A frame wslay's parser refused (a control frame fragmented or longer
 * than 125 bytes, a bad length encoding): wslay would answer with a
 * close frame without a status; RFC 6455 7.4.1 has 1002 for it. Its own
 * queue is abandoned: this 4-byte unmasked frame is all that follows. */
static void ws_fail_frame(struct ws_conn *w)
{
	static const uint8_t close_1002[4] = {0x88, 0x02, 0x03, 0xea};
	w->frame_error = true;
	w->close_code = WS_CLOSE_PROTOCOL_ERROR;
	w->why = "malformed or fragmented control frame";
	if (wbuf_append(&w->out, close_1002, sizeof(close_1002)) < 0)
		w->send_failed = true;
}

static const char *close_reason(uint16_t code)
{
	switch (code) {
	case WS_CLOSE_PROTOCOL_ERROR:
		return "WebSocket protocol error (unmasked frame, reserved "
		       "bits or opcode, bad continuation or close code)";
	case WS_CLOSE_INVALID_PAYLOAD:
		return "invalid UTF-8 in a WebSocket close frame";
	case WS_CLOSE_MESSAGE_TOO_BIG:
		return "WebSocket frame larger than the packet limit";
	default:
		return "WebSocket error";
	}
}

static enum ws_event ws_feed_frames(struct ws_conn *w, const uint8_t *data,
				    size_t len)
{
	if (w->frame_error || w->stopped || w->send_failed)
		return WS_EV_NONE;
	w->in = data;
	w->in_len = len;
	int rc = wslay_event_recv(w->ev);
	w->in = NULL;
	w->in_len = 0;
	if (rc == WSLAY_ERR_CALLBACK_FAILURE && !w->send_failed)
		ws_fail_frame(w);
	else if (rc)
		w->send_failed = true;
	ws_pump(w);
	if (w->send_failed) {
		w->why = "out of memory";
		w->state = WS_DONE;
		return WS_EV_FAILED;
	}
	if (w->frame_error) {
		w->state = WS_DONE;
		return WS_EV_FAILED;
	}
	if (wslay_event_get_close_received(w->ev)) {
		w->close_code = wslay_event_get_status_code_sent(w->ev);
		ws_log(w, WS_LOG_DEBUG, "close frame, code %u: answered with %u",
		       ws_close_code_received(w), w->close_code);
		w->state = WS_DONE;
		return WS_EV_CLOSED;
	}
	if (wslay_event_get_close_sent(w->ev)) {
		w->close_code = wslay_event_get_status_code_sent(w->ev);
		if (w->close_code != WS_CLOSE_UNSUPPORTED_DATA)
			w->why = close_reason(w->close_code);
		w->state = WS_DONE;
		return WS_EV_FAILED;
	}
	return WS_EV_NONE;
}

static enum ws_event ws_feed_http(struct ws_conn *w, const uint8_t *data,
				  size_t len)
{
	/* The head is kept only up to its bound: beyond, it is refused. */
	size_t room = w->lim.head_max - w->req.len;
	size_t take = len < room ? len : room;
	if (wbuf_append(&w->req, data, take) < 0) {
		w->state = WS_DONE;
		w->why = "out of memory";
		return WS_EV_FAILED;
	}
	struct ws_http_req req;
	if (!ws_http_parse(w->req.data, w->req.len, w->lim.head_max,
			   w->lim.http_files, &req))
		return WS_EV_NONE;
	ws_log_head(w, w->req.data, req.head_len ? req.head_len : w->req.len);
	w->why = req.why;
	if (req.status == 200) {
		memcpy(w->path, req.path, sizeof(w->path));
		w->http_status = 200;
		w->state = WS_DONE;
		wbuf_free(&w->req);
		return WS_EV_HTTP_GET;
	}
	if (req.status != 101) {
		w->state = WS_DONE;
		wbuf_free(&w->req);
		if (ws_out_http_error(w, req.status, req.why) < 0)
			return WS_EV_FAILED;
		return WS_EV_HTTP_REFUSED;
	}
	if (ws_upgrade(w, &req) < 0) {
		w->state = WS_DONE;
		w->why = "out of memory";
		return WS_EV_FAILED;
	}
	/* Frames sent right behind the request. */
	struct wbuf head = w->req;
	memset(&w->req, 0, sizeof(w->req));
	enum ws_event ev = WS_EV_NONE;
	if (head.len > req.head_len)
		ev = ws_feed_frames(w, head.data + req.head_len,
				    head.len - req.head_len);
	wbuf_free(&head);
	if (ev == WS_EV_NONE && take < len)
		ev = ws_feed_frames(w, data + take, len - take);
	return ev;
}

enum ws_event ws_feed(struct ws_conn *w, const uint8_t *data, size_t len)
{
	switch (w->state) {
	case WS_HTTP:
		return ws_feed_http(w, data, len);
	case WS_OPEN:
		return ws_feed_frames(w, data, len);
	default:
		return WS_EV_NONE;
	}
}

int ws_send_binary(struct ws_conn *w, const uint8_t *data, size_t len)
{
	if (!w->ev || w->frame_error || w->send_failed)
		return -1;
	struct wslay_event_msg m = {
		.opcode = WSLAY_BINARY_FRAME, .msg = data, .msg_length = len};
	if (wslay_event_queue_msg(w->ev, &m) != 0)
		return -1;
	ws_pump(w);
	return w->send_failed ? -1 : 0;
}

void ws_send_close(struct ws_conn *w, uint16_t code)
{
	if (!w->ev || w->frame_error || w->send_failed ||
	    wslay_event_get_close_sent(w->ev))
		return;
	if (wslay_event_queue_close(w->ev, code, NULL, 0) == 0) {
		w->close_code = code;
		ws_pump(w);
	}
}

size_t ws_out_pending(const struct ws_conn *w, const uint8_t **p)
{
	/* No buffer yet: NULL + 0 is undefined (UBSan says so). */
	*p = w->out.data ? w->out.data + w->out.off : w->out.data;
	return w->out.len - w->out.off;
}

void ws_out_consume(struct ws_conn *w, size_t len)
{
	assert(len <= w->out.len - w->out.off);
	w->out.off += len;
	if (w->out.off == w->out.len) {
		w->out.off = w->out.len = 0;
		/* A large answer (a file) does not stay allocated. */
		if (w->out.cap > 65536)
			wbuf_free(&w->out);
	}
}

void ws_out_drop(struct ws_conn *w)
{
	wbuf_free(&w->out);
}
