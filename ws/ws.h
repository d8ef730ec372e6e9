/* MQTT over WebSockets (RFC 6455), bytes in and bytes out.
 *
 * A ws_conn sits between the transport (plain TCP, userspace TLS or kernel
 * TLS: the engine decides) and the MQTT framer. It never touches a socket
 * or a file: the engine feeds it what it received and sends what it
 * produced (ws_out_pending / ws_out_consume).
 *
 * First the HTTP/1.1 upgrade request, parsed by hand with a hard bound on
 * its size; then frames, parsed and built by wslay (Debian's libwslay, an
 * I/O-free RFC 6455 implementation) without buffering data frames: binary
 * payload goes to the data callback as it arrives, so memory follows the
 * bytes received, never a length a frame header announces.
 *
 * Engine call sequence:
 *   accept:      w = ws_conn_new(&limits, data_cb, arg)
 *   each recv:   ev = ws_feed(w, bytes, n)     (data_cb runs inside)
 *                WS_EV_HTTP_GET: ws_http_path(w), then ws_out_raw() with
 *                the answer and close after flushing
 *   flush:       ws_send_binary(w, mqtt_bytes, n); ws_out_pending(w, &p)
 *   closing:     ws_send_close(w, 1000) for last words, ws_out_drop()
 *   free:        ws_conn_free(w)
 * One ws_conn belongs to one thread at a time. */
#ifndef KITE_WS_H
#define KITE_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 6455 7.4.1 status codes kite sends. */
enum ws_status {
	WS_CLOSE_NORMAL = 1000,
	WS_CLOSE_PROTOCOL_ERROR = 1002,
	WS_CLOSE_UNSUPPORTED_DATA = 1003,
	WS_CLOSE_INVALID_PAYLOAD = 1007,
	WS_CLOSE_MESSAGE_TOO_BIG = 1009,
	WS_CLOSE_INTERNAL_ERROR = 1011,
};

/* What a ws_feed call ended with. */
enum ws_event {
	WS_EV_NONE,	    /* bytes consumed; more may come */
	WS_EV_HTTP_GET,	    /* a plain GET for a file: ws_http_path() */
	WS_EV_HTTP_REFUSED, /* an HTTP error answer is in the output */
	WS_EV_CLOSED,	    /* the client's close frame, answered */
	WS_EV_FAILED,	    /* a protocol violation: our close frame with
			       ws_close_code() is in the output */
};

/* websockets_log_level: Mosquitto hands the option to libwebsockets as a
 * mask of its lws_log_levels; kite logs its own WebSocket events under the
 * same bits. ws/ reports the wire-level ones (request headers,
 * extensions, frames, control frames); the engine the rest (upgrades,
 * refusals, violations, closes). */
enum ws_log {
	WS_LOG_ERR = 1,
	WS_LOG_WARN = 2,
	WS_LOG_NOTICE = 4,
	WS_LOG_INFO = 8,
	WS_LOG_DEBUG = 16,
	WS_LOG_PARSER = 32,
	WS_LOG_HEADER = 64,
	WS_LOG_EXT = 128,
	WS_LOG_CLIENT = 256,  /* a client's side: kite has none */
	WS_LOG_LATENCY = 512, /* libwebsockets' own timings: none */
	WS_LOG_ALL = 1023,
};

/* One line of the trace (no newline, printable ASCII only). */
typedef void (*ws_log_cb)(void *arg, unsigned level, const char *line);

/* Receives a binary frame's payload as it arrives, in order, possibly in
 * pieces; returns false to stop reading (the connection is closing). */
typedef bool (*ws_data_cb)(void *arg, const uint8_t *data, size_t len);

struct ws_limits {
	uint32_t head_max;  /* bytes of the upgrade request's head */
	uint64_t frame_max; /* payload bytes of one data frame (1009 above) */
	bool http_files;    /* plain GETs are for files (http_dir is set) */
	unsigned log_mask;  /* enum ws_log bits to report to log */
	ws_log_cb log;	    /* with the data callback's arg; may be NULL */
};

/* The name libwebsockets gives a level ("N", "HEADER", ...). */
const char *ws_log_name(unsigned level);

struct ws_conn;

struct ws_conn *ws_conn_new(const struct ws_limits *lim, ws_data_cb cb,
			    void *arg);
void ws_conn_free(struct ws_conn *w);

/* Feeds received bytes (upgrade request, then frames). */
enum ws_event ws_feed(struct ws_conn *w, const uint8_t *data, size_t len);

/* True once the upgrade was answered with 101. */
bool ws_is_open(const struct ws_conn *w);
/* The status code of the close frame kite sent, 0 if none yet. */
uint16_t ws_close_code(const struct ws_conn *w);
/* Why the request was refused or the connection failed, for the log. */
const char *ws_error(const struct ws_conn *w);
/* The HTTP status kite answered the request with (101, 400, ...). */
int ws_http_status(const struct ws_conn *w);
/* After the upgrade: the subprotocol agreed on ("mqtt", "mqttv3.1"). */
const char *ws_subprotocol(const struct ws_conn *w);
/* The status code in the client's close frame: 0 if none came, 1005 if
 * it had none (RFC 6455 7.1.5). */
uint16_t ws_close_code_received(const struct ws_conn *w);
/* After WS_EV_HTTP_GET: the decoded path below the served directory,
 * without a leading '/' ("index.html" for "/"); never has a "." or ".."
 * segment, a NUL, a backslash or an empty segment. */
const char *ws_http_path(const struct ws_conn *w);

/* MQTT bytes as one binary frame. 0, or -1 when no more frames can be
 * sent (closed) or out of memory. */
int ws_send_binary(struct ws_conn *w, const uint8_t *data, size_t len);
/* Our close frame, once; a no-op before the upgrade or after a close. */
void ws_send_close(struct ws_conn *w, uint16_t code);
/* Bytes for the wire as they are (an HTTP answer). 0 or -1 (memory). */
int ws_out_raw(struct ws_conn *w, const void *data, size_t len);
/* An HTTP error answer with a short text body (kite's own files). */
int ws_out_http_error(struct ws_conn *w, int status, const char *why);

/* Output waiting for the transport. */
size_t ws_out_pending(const struct ws_conn *w, const uint8_t **p);
void ws_out_consume(struct ws_conn *w, size_t len);
void ws_out_drop(struct ws_conn *w);

/* ---- the HTTP upgrade request (exposed for the unit tests and fuzzer) -- */

struct ws_http_req {
	int status;	     /* 101 to upgrade, 200 for a file GET, else the
				error status to answer */
	const char *why;     /* for the log and the answer's body */
	size_t head_len;     /* bytes of the head, final CRLF CRLF included */
	char accept[32];     /* Sec-WebSocket-Accept for 101 */
	char subprotocol[16]; /* "mqtt" or "mqttv3.1" for 101 */
	char path[256];	     /* for 200 */
};

/* Parses one request head from buf. Returns 0 when more bytes are needed
 * (and the head so far fits in head_max), else 1 with req filled. */
int ws_http_parse(const uint8_t *buf, size_t len, uint32_t head_max,
		  bool http_files, struct ws_http_req *req);

#endif
