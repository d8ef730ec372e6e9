/* libFuzzer target for ws/ws.c: the upgrade request parser and the frame
 * path.
 *
 * The first byte picks the limits and how the rest is cut into receives.
 * ws_http_parse must never read past its input, must say "need more" only
 * while the head fits its bound, and a 101 must carry a 28-character
 * accept key. Then the same bytes go through a ws_conn: after a
 * successful upgrade, what the data callback gets must never exceed what
 * was fed, and the output must be an HTTP head followed by well-formed
 * unmasked server frames. Only our own bugs abort. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws/ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                    \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz_ws: %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                             \
			abort();                                              \
		}                                                             \
	} while (0)

struct sink {
	size_t bytes;
	size_t stop_after;
};

static bool data_cb(void *arg, const uint8_t *d, size_t len)
{
	struct sink *s = arg;
	FUZZ_ASSERT(d && len > 0);
	s->bytes += len;
	return s->bytes < s->stop_after;
}

/* Server frames: FIN/opcode byte, unmasked length, payload. */
static void check_frames(const uint8_t *p, size_t n)
{
	while (n) {
		FUZZ_ASSERT(n >= 2);
		uint8_t op = p[0] & 15;
		FUZZ_ASSERT((p[0] & 0x70) == 0 && !(p[1] & 0x80));
		FUZZ_ASSERT(op == 2 || op == 8 || op == 10);
		uint64_t len = p[1] & 127;
		size_t off = 2;
		if (len == 126) {
			FUZZ_ASSERT(n >= 4);
			len = (uint64_t)p[2] << 8 | p[3];
			off = 4;
		} else if (len == 127) {
			FUZZ_ASSERT(n >= 10);
			len = 0;
			for (int i = 0; i < 8; i++)
				len = len << 8 | p[2 + i];
			off = 10;
		}
		if (op != 2)
			FUZZ_ASSERT(len <= 125);
		FUZZ_ASSERT(n - off >= len);
		p += off + len;
		n -= off + len;
	}
}

/* No "." or ".." segment, no empty one, no NUL inside, no backslash. */
static bool segments_safe(const char *path)
{
	if (strchr(path, '\\'))
		return false;
	for (const char *s = path;;) {
		const char *e = strchr(s, '/');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		if (n == 0 || (n == 1 && s[0] == '.') ||
		    (n == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		if (!e)
			return true;
		s = e + 1;
	}
}

static void check_parse(const uint8_t *d, size_t n, uint32_t head_max,
			bool files)
{
	uint8_t *copy = malloc(n ? n : 1); /* exact size: ASan sees overreads */
	FUZZ_ASSERT(copy);
	memcpy(copy, d, n);
	struct ws_http_req req;
	int rc = ws_http_parse(copy, n, head_max, files, &req);
	if (rc == 0) {
		FUZZ_ASSERT(n < head_max);
	} else {
		FUZZ_ASSERT(req.status >= 101 && req.status <= 599);
		FUZZ_ASSERT(req.status == 101 || req.status == 200 || req.why);
		if (req.status == 101)
			FUZZ_ASSERT(strlen(req.accept) == 28);
		if (req.status == 200) {
			FUZZ_ASSERT(files && req.path[0] && req.path[0] != '/');
			FUZZ_ASSERT(segments_safe(req.path));
		}
		if (req.status == 101 || req.status == 200)
			FUZZ_ASSERT(req.head_len > 0 && req.head_len <= n);
	}
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	data++;
	size--;
	uint32_t head_max = (mode & 1) ? 1024 : 4096;
	bool files = mode & 2;
	check_parse(data, size, head_max, files);

	/* The stream, cut into receives of a size the mode picks. */
	struct sink sink = {.stop_after = (mode & 4) ? 64 : SIZE_MAX};
	struct ws_limits lim = {.head_max = head_max,
				.frame_max = (mode & 8) ? 100 : 1u << 20,
				.http_files = files};
	struct ws_conn *w = ws_conn_new(&lim, data_cb, &sink);
	FUZZ_ASSERT(w);
	size_t step = 1 + (mode >> 4) * 17;
	size_t fed = 0;
	for (size_t off = 0; off < size; off += step) {
		size_t n = size - off < step ? size - off : step;
		enum ws_event ev = ws_feed(w, data + off, n);
		fed += n;
		if (ev != WS_EV_NONE)
			break;
		if (ws_is_open(w) && (off & 3) == 0) {
			uint8_t out[300];
			memset(out, 0xab, sizeof(out));
			ws_send_binary(w, out, (off * 7) % sizeof(out) + 1);
		}
	}
	FUZZ_ASSERT(sink.bytes <= fed);
	if (ws_is_open(w))
		ws_send_close(w, WS_CLOSE_NORMAL);
	const uint8_t *p;
	size_t n = ws_out_pending(w, &p);
	if (n && ws_is_open(w)) {
		const uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
		FUZZ_ASSERT(end && !memcmp(p, "HTTP/1.1 101 ", 13));
		check_frames(end + 4, n - (size_t)(end + 4 - p));
	} else if (n) {
		FUZZ_ASSERT(!memcmp(p, "HTTP/1.1 ", 9));
	}
	ws_out_consume(w, n);
	ws_conn_free(w);
	return 0;
}
