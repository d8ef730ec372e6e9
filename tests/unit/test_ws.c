/* ws/ws.c: the upgrade request parser and the frame path, bytes only. */
#include <stdlib.h>
#include <string.h>

#include "tests/unit/runner.h"
#include "ws/ws.h"

static const char good[] =
	"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
	"Connection: keep-alive, Upgrade\r\n"
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, mqtt\r\n\r\n";

static int parse(const char *req, bool files, struct ws_http_req *r)
{
	return ws_http_parse((const uint8_t *)req, strlen(req), 1024, files, r);
}

TEST(ws_upgrade_answers_rfc6455_accept_key)
{
	struct ws_http_req r;
	CHECK_EQ(parse(good, false, &r), 1);
	CHECK_EQ(r.status, 101);
	CHECK_STR(r.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); /* RFC 6455 1.3 */
	CHECK_STR(r.subprotocol, "mqtt");
	CHECK_EQ(r.head_len, strlen(good));
	/* Every prefix asks for more. */
	for (size_t n = 0; n < strlen(good); n++)
		CHECK_EQ(ws_http_parse((const uint8_t *)good, n, 1024, false, &r), 0);
}

TEST(ws_bad_requests_get_their_status)
{
	struct ws_http_req r;
	CHECK_EQ(parse("POST / HTTP/1.1\r\nHost: x\r\n\r\n", true, &r), 1);
	CHECK_EQ(r.status, 405);
	CHECK_EQ(parse("GET / HTTP/1.1\nHost: x\n\n", true, &r), 1);
	CHECK_EQ(r.status, 400);
	CHECK_EQ(parse("GET / HTTP/2.0\r\n\r\n", true, &r), 1);
	CHECK_EQ(r.status, 505);
	CHECK_EQ(parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n", false, &r), 1);
	CHECK_EQ(r.status, 426);
	char big[2048];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
	CHECK_EQ(parse(big, false, &r), 1);
	CHECK_EQ(r.status, 431);
}

TEST(ws_file_paths_stay_below_the_directory)
{
	struct ws_http_req r;
	CHECK_EQ(parse("GET /a/b.js?x=../y HTTP/1.1\r\nHost: x\r\n\r\n", true, &r), 1);
	CHECK_EQ(r.status, 200);
	CHECK_STR(r.path, "a/b.js");
	CHECK_EQ(parse("GET / HTTP/1.0\r\n\r\n", true, &r), 1);
	CHECK_STR(r.path, "index.html");
	const char *bad[] = {"/../x", "/a/%2e%2e/x", "/a/./b", "/a%2fb", "//x",
			     "/a%00b", "/a\\b", "x"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char req[128];
		snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n",
			 bad[i]);
		CHECK_EQ(parse(req, true, &r), 1);
		CHECK(r.status == 400 || r.status == 403);
	}
}

static size_t got_bytes;
static bool count_cb(void *arg, const uint8_t *d, size_t len)
{
	got_bytes += len;
	return true;
}

static uint16_t feed_and_close_code(const uint8_t *frame, size_t len,
				    uint64_t frame_max)
{
	struct ws_limits lim = {.head_max = 1024, .frame_max = frame_max};
	struct ws_conn *w = ws_conn_new(&lim, count_cb, NULL);
	if (ws_feed(w, (const uint8_t *)good, strlen(good)) != WS_EV_NONE ||
	    !ws_is_open(w))
		abort(); /* checked by ws_upgrade_answers_rfc6455_accept_key */
	ws_feed(w, frame, len);
	uint16_t code = ws_close_code(w);
	ws_conn_free(w);
	return code;
}

TEST(ws_frame_violations_close_with_their_code)
{
	/* masked (key 0) frames unless said otherwise */
	static const uint8_t unmasked[] = {0x82, 0x02, 0xc0, 0x00};
	static const uint8_t frag_ping[] = {0x09, 0x80, 0, 0, 0, 0};
	static const uint8_t text[] = {0x81, 0x81, 0, 0, 0, 0, 'a'};
	static const uint8_t bad_utf8[] = {0x88, 0x84, 0, 0, 0, 0, 0x03, 0xe8, 0xff, 0xfe};
	static const uint8_t huge[] = {0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30};
	CHECK_EQ(feed_and_close_code(unmasked, sizeof(unmasked), 1000), 1002);
	CHECK_EQ(feed_and_close_code(frag_ping, sizeof(frag_ping), 1000), 1002);
	CHECK_EQ(feed_and_close_code(text, sizeof(text), 1000), 1003);
	CHECK_EQ(feed_and_close_code(bad_utf8, sizeof(bad_utf8), 1000), 1007);
	CHECK_EQ(feed_and_close_code(huge, sizeof(huge), 1000), 1009);
}

TEST(ws_binary_payload_streams_without_buffering)
{
	struct ws_limits lim = {.head_max = 1024, .frame_max = 1u << 30};
	struct ws_conn *w = ws_conn_new(&lim, count_cb, NULL);
	CHECK_EQ(ws_feed(w, (const uint8_t *)good, strlen(good)), WS_EV_NONE);
	/* A frame announcing 2^29 bytes: what arrives is passed on as it
	 * arrives. */
	uint8_t f[10 + 4 + 100] = {0x82, 0xff, 0, 0, 0, 0, 0x20, 0, 0, 0};
	got_bytes = 0;
	CHECK_EQ(ws_feed(w, f, sizeof(f)), WS_EV_NONE);
	CHECK_EQ(got_bytes, 100);
	/* Our frames: a 101 head, then unmasked binary. */
	CHECK_EQ(ws_send_binary(w, (const uint8_t *)"\x20\x02\x00\x00", 4), 0);
	const uint8_t *p;
	size_t n = ws_out_pending(w, &p);
	CHECK(n > 6 && !memcmp(p, "HTTP/1.1 101 ", 13));
	CHECK(!memcmp(p + n - 6, "\x82\x04\x20\x02\x00\x00", 6));
	ws_conn_free(w);
}
