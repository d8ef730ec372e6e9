/* MQTT over WebSockets in the engine: what ws/ makes of received bytes,
 * and the files of http_dir.
 *
 * ws/ws.h parses and frames; this file wires it to a connection: binary
 * payload goes to conn_on_plain like any MQTT bytes, its output leaves
 * through conn_flush (conn.c), and the connection closes as the
 * WebSocket layer decides. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/log.h"
#include "ws/ws.h"
#include "io/conn.h"
#include "io/wsconn.h"

/* Files larger than this are refused (403): a file is read whole into
 * the connection's output, synchronously, on the shard's thread, so
 * http_dir is for a page and its scripts, not for downloads. */
#define WS_FILE_MAX (16u << 20)

/* websockets_log_level bits this connection's events are logged at
 * (log_type websockets too, as Mosquitto wants for libwebsockets'). */
static unsigned wsconn_log_mask(const struct kite_config *cfg)
{
	return log_enabled(KITE_LOG_WEBSOCKETS)
		       ? (unsigned)cfg->websockets_log_level & WS_LOG_ALL
		       : 0;
}

static void wsconn_log_cb(void *arg, unsigned level, const char *line)
{
	struct conn *c = arg;
	char peer[64];
	log_msg(KITE_LOG_WEBSOCKETS, "WebSocket %s: %s: %s", ws_log_name(level),
		conn_peer_str(c, peer, sizeof(peer)), line);
}

static void wsconn_log(struct conn *c, unsigned level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void wsconn_log(struct conn *c, unsigned level, const char *fmt, ...)
{
	if (!(wsconn_log_mask(c->shard->cfg) & level))
		return;
	char line[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	wsconn_log_cb(c, level, line);
}

static bool wsconn_data_cb(void *arg, const uint8_t *data, size_t len)
{
	struct conn *c = arg;
	conn_on_plain(c, data, len);
	return c->state != CONN_CLOSING;
}

int wsconn_attach(struct conn *c, const struct kite_config *cfg,
		  const struct kite_listener_cfg *l)
{
	struct ws_limits lim = {
		.head_max = cfg->websockets_headers_size
				    ? cfg->websockets_headers_size
				    : KITE_WS_HEADERS_SIZE_DEFAULT,
		/* A data frame larger than the largest packet allowed is
		 * refused with 1009 before any of it is read. */
		.frame_max = cfg->max_packet_size ? cfg->max_packet_size
						  : MQTT_VARINT_MAX + 5u,
		.http_files = l->http_dir[0] != '\0',
		.log_mask = wsconn_log_mask(cfg),
		.log = wsconn_log_cb,
	};
	c->ws = ws_conn_new(&lim, wsconn_data_cb, c);
	return c->ws ? 0 : -1;
}

static const char *content_type(const char *path)
{
	static const struct {
		const char *ext, *type;
	} types[] = {
		{".html", "text/html; charset=utf-8"},
		{".htm", "text/html; charset=utf-8"},
		{".js", "text/javascript; charset=utf-8"},
		{".mjs", "text/javascript; charset=utf-8"},
		{".css", "text/css; charset=utf-8"},
		{".json", "application/json"},
		{".map", "application/json"},
		{".txt", "text/plain; charset=utf-8"},
		{".png", "image/png"},
		{".jpg", "image/jpeg"},
		{".jpeg", "image/jpeg"},
		{".gif", "image/gif"},
		{".svg", "image/svg+xml"},
		{".ico", "image/x-icon"},
		{".wasm", "application/wasm"},
	};
	const char *dot = strrchr(path, '.');
	for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
		if (!strcasecmp(dot, types[i].ext))
			return types[i].type;
	return "application/octet-stream";
}

/* Opens path below dir: openat2 with RESOLVE_BENEATH refuses "..",
 * absolute symlinks and any symlink that leads out of dir, whatever
 * ws/ already checked in the path itself. -errno on failure. */
static int open_beneath(const char *dir, const char *path)
{
	int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	struct open_how how = {
		/* O_NONBLOCK: a FIFO planted in the directory must not hang
		 * the shard; it is refused below as not a regular file. */
		.flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	int fd = (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
	int err = errno;
	close(dfd);
	return fd < 0 ? -err : fd;
}

/* Reads the whole regular file; its bytes in *body (caller frees). An
 * HTTP status. */
static int read_file(int fd, uint8_t **body, size_t *len, const char **why)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		*why = "not a regular file";
		return 404;
	}
	if ((uint64_t)st.st_size > WS_FILE_MAX) {
		*why = "file larger than 16 MiB";
		return 403;
	}
	size_t n = (size_t)st.st_size, got = 0;
	uint8_t *b = malloc(n ? n : 1);
	if (!b) {
		*why = "out of memory";
		return 500;
	}
	while (got < n) {
		ssize_t r = pread(fd, b + got, n - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			free(b);
			*why = r < 0 ? strerror(errno) : "file shrank while read";
			return 500;
		}
		got += (size_t)r;
	}
	*body = b;
	*len = n;
	return 200;
}

static int serve_file(struct conn *c, const char *dir, const char *path,
		      const char **why)
{
	int fd = open_beneath(dir, path);
	if (fd < 0) {
		*why = strerror(-fd);
		return fd == -ENOENT || fd == -ENOTDIR ? 404
		       : fd == -EXDEV || fd == -EACCES || fd == -ELOOP ||
				       fd == -EPERM
			       ? 403
			       : 500;
	}
	uint8_t *body = NULL;
	size_t len = 0;
	int status = read_file(fd, &body, &len, why);
	close(fd);
	if (status != 200)
		return status;
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n"
			 "X-Content-Type-Options: nosniff\r\n"
			 "Cache-Control: no-cache\r\n\r\n",
			 content_type(path), len);
	int rc = ws_out_raw(c->ws, head, (size_t)n);
	if (rc == 0)
		rc = ws_out_raw(c->ws, body, len);
	free(body);
	if (rc < 0) {
		ws_out_drop(c->ws);
		*why = "out of memory";
		return 500;
	}
	return 200;
}

/* A plain GET on a listener with http_dir: the file, or an error. */
static void wsconn_http_get(struct conn *c)
{
	const struct kite_listener_cfg *l = &c->shard->cfg->listeners[c->listener];
	const char *path = ws_http_path(c->ws);
	const char *why = "";
	char peer[64];
	int status = serve_file(c, l->http_dir, path, &why);
	if (status != 200)
		ws_out_http_error(c->ws, status, status == 404 ? "not found"
						 : status == 403 ? "forbidden"
								 : "error");
	log_msg(status == 200 ? KITE_LOG_DEBUG : KITE_LOG_NOTICE,
		"HTTP GET /%s from %s: %d%s%s", path,
		conn_peer_str(c, peer, sizeof(peer)), status,
		status == 200 ? "" : ", ", status == 200 ? "" : why);
	wsconn_log(c, status == 200 ? WS_LOG_INFO
		      : status == 500 ? WS_LOG_ERR
				      : WS_LOG_WARN,
		   "HTTP GET /%s: %d%s%s", path, status,
		   status == 200 ? "" : ", ", status == 200 ? "" : why);
	conn_mark_dirty(c);
	conn_close_after_flush(c, status == 200 ? "HTTP file served"
						: "HTTP request refused");
}

void wsconn_on_data(struct conn *c, const uint8_t *data, size_t len)
{
	bool was_open = ws_is_open(c->ws);
	enum ws_event ev = ws_feed(c->ws, data, len);
	const uint8_t *p;
	if (ws_out_pending(c->ws, &p))
		conn_mark_dirty(c);
	if (c->state == CONN_CLOSING)
		return;
	char why[200];
	char peer[64];
	switch (ev) {
	case WS_EV_NONE:
		if (was_open || !ws_is_open(c->ws))
			return;
		if (log_enabled(KITE_LOG_DEBUG))
			log_msg(KITE_LOG_DEBUG, "WebSocket upgrade from %s",
				conn_peer_str(c, peer, sizeof(peer)));
		wsconn_log(c, WS_LOG_NOTICE, "upgrade accepted (subprotocol %s)",
			   ws_subprotocol(c->ws));
		return;
	case WS_EV_HTTP_GET:
		wsconn_http_get(c);
		return;
	case WS_EV_HTTP_REFUSED:
		conn_strike(c);
		snprintf(why, sizeof(why), "HTTP %d: %s", ws_http_status(c->ws),
			 ws_error(c->ws));
		wsconn_log(c, WS_LOG_WARN, "upgrade refused, %s", why);
		conn_close_after_flush(c, why);
		return;
	case WS_EV_CLOSED:
		snprintf(why, sizeof(why), "closed by client (WebSocket close, "
			 "answered with %u)", ws_close_code(c->ws));
		wsconn_log(c, WS_LOG_NOTICE, "closed by the client with code %u, "
			   "answered with %u", ws_close_code_received(c->ws),
			   ws_close_code(c->ws));
		break;
	case WS_EV_FAILED:
		if (c->state == CONN_AWAIT_CONNECT)
			conn_strike(c);
		snprintf(why, sizeof(why), "%s (WebSocket close %u)",
			 ws_error(c->ws), ws_close_code(c->ws));
		wsconn_log(c, ws_close_code(c->ws) == WS_CLOSE_INTERNAL_ERROR ||
				      !ws_close_code(c->ws)
			      ? WS_LOG_ERR
			      : WS_LOG_WARN,
			   "%s: closing with code %u", ws_error(c->ws),
			   ws_close_code(c->ws));
		break;
	}
	/* Our close frame goes out; the will, as for any connection that
	 * ends without DISCONNECT. */
	c->flags |= CONN_CLOSE_AFTER_FLUSH;
	conn_close(c, why, true);
}
