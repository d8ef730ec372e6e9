/* The metrics listener (`protocol metrics`): Prometheus' text exposition
 * format 0.0.4 at GET /metrics, over io_uring on the shard that accepted
 * the scrape, one request per connection (Connection: close).
 *
 * A scraper gets nothing it could use against the broker: a request is at
 * most METRICS_REQUEST_MAX bytes (431 beyond), must be complete within
 * METRICS_REQUEST_TIMEOUT_MS (408), and the whole exchange ends by
 * METRICS_SCRAPE_TIMEOUT_MS whatever the peer does; at most
 * METRICS_SCRAPES_MAX scrapes per listener run at once (503 for a few
 * more, then refused), and each holds one answer built in one go, never
 * more than METRICS_OUTPUT_MAX. Figures are read from every shard's
 * counters with relaxed loads: nothing on the data path waits for a
 * scrape. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bpf/flood_filter.h"
#include "core/log.h"
#include "core/retain.h"
#include "io/metrics.h"
#include "io/shard.h"
#include "io/version.h"

#define METRICS_REQUEST_MAX 8192
#define METRICS_REQUEST_TIMEOUT_MS 5000
#define METRICS_SCRAPE_TIMEOUT_MS 15000
#define METRICS_OUTPUT_MAX (1u << 20)
/* What a closing scrape reads and throws away (so that closing with unread
 * input does not reset the connection before the client read the answer). */
#define METRICS_DRAIN_MAX (64u << 10)
#define SCRAPE_SLOTS METRICS_SCRAPE_SLOTS

_Static_assert(SCRAPE_SLOTS <= 256, "slot fits the user_data id's low byte");

enum scrape_state { SC_READING, SC_WRITING, SC_LINGER, SC_CLOSING };
enum scrape_op { SC_OP_RECV = 1, SC_OP_SEND, SC_OP_SHUTDOWN };

struct scrape {
	int fd;
	uint32_t gen;
	uint8_t li;
	uint8_t state;	 /* enum scrape_state */
	bool counted;	 /* one of the listener's METRICS_SCRAPES_MAX */
	bool recv_busy, send_busy;
	uint8_t shutdowns; /* in flight */
	uint64_t started_ms;
	uint32_t in_len, drained;
	char *out;
	size_t out_len, out_off;
	char in[METRICS_REQUEST_MAX];
};

/* ---- the answer --------------------------------------------------------- */

struct mbuf {
	char *p;
	size_t len, cap;
	bool full; /* METRICS_OUTPUT_MAX reached: answer 500 */
};

__attribute__((format(printf, 2, 3))) static void mb_printf(struct mbuf *m,
							    const char *fmt,
							    ...)
{
	if (m->full)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(m->p ? m->p + m->len : NULL,
				  m->p ? m->cap - m->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			m->full = true;
			return;
		}
		if (m->p && m->len + (size_t)n < m->cap) {
			m->len += (size_t)n;
			return;
		}
		size_t cap = m->cap ? m->cap * 2 : 16384;
		while (cap < m->len + (size_t)n + 1)
			cap *= 2;
		char *p = cap <= METRICS_OUTPUT_MAX ? realloc(m->p, cap) : NULL;
		if (!p) {
			m->full = true;
			return;
		}
		m->p = p;
		m->cap = cap;
	}
}

static void mb_family(struct mbuf *m, const char *name, const char *type,
		      const char *help)
{
	mb_printf(m, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t stat_load(const struct shard *s, size_t off)
{
	const _Atomic uint64_t *f =
		(const _Atomic uint64_t *)((const char *)&s->stats + off);
	return atomic_load_explicit(f, memory_order_relaxed);
}

static uint64_t stat_sum(const struct broker *b, size_t off)
{
	uint64_t sum = 0;
	for (unsigned i = 0; i < b->nshards; i++)
		sum += stat_load(&b->shards[i], off);
	return sum;
}

#define OFF(field) offsetof(struct shard_stats, field)

static const char *const drop_reason_names[DROP_REASONS] = {
	[DROP_OFFLINE] = "offline",
	[DROP_QUEUE_FULL] = "queue_full",
	[DROP_UNDELIVERABLE] = "undeliverable",
	[DROP_NO_MEMORY] = "no_memory",
};

static const char *const tls_result_names[TLS_HS_RESULTS] = {
	[TLS_HS_OK] = "ok",
	[TLS_HS_ERROR] = "error",
	[TLS_HS_TIMEOUT] = "timeout",
};

/* A figure every shard keeps: a total (kite_NAME) and one series per
 * shard (kite_shard_NAME{shard="i"}). With a label, one series per value
 * of it, each its own uint64_t from `off` on (an array in struct
 * shard_stats). */
struct shard_metric {
	const char *name, *type, *help;
	const char *shard_help; /* NULL: help */
	size_t off;
	const char *label;
	const char *const *values;
	unsigned nvalues;
};

_Static_assert(sizeof(((struct shard_stats *)0)->dropped[0]) ==
			       sizeof(uint64_t) &&
		       sizeof(((struct shard_stats *)0)->tls_handshakes[0]) ==
			       sizeof(uint64_t),
	       "labelled series step through uint64_t arrays");

#define FIGURE(name, type, help, field)                                      \
	{name, type, help, NULL, OFF(field), NULL, NULL, 0}

static const struct shard_metric shard_metrics[] = {
	FIGURE("clients_connected", "gauge",
	       "Clients connected (CONNECT accepted; $SYS clients/connected).",
	       clients_connected),
	FIGURE("sessions", "gauge",
	       "Sessions, online and offline ($SYS clients/total).", sessions),
	FIGURE("subscriptions", "gauge",
	       "Subscriptions ($SYS subscriptions/count).", subscriptions),
	FIGURE("messages_received_total", "counter",
	       "MQTT packets of any type received ($SYS messages/received, as "
	       "Mosquitto counts).",
	       msgs_received),
	FIGURE("messages_sent_total", "counter",
	       "MQTT packets of any type sent ($SYS messages/sent).",
	       msgs_sent),
	FIGURE("publish_received_total", "counter",
	       "PUBLISH packets received from clients.", publish_received),
	FIGURE("publish_sent_total", "counter",
	       "PUBLISH packets sent to clients (resends included).",
	       publish_sent),
	FIGURE("bytes_received_total", "counter",
	       "Bytes received from MQTT clients (TLS: ciphertext).",
	       bytes_received),
	FIGURE("bytes_sent_total", "counter", "Bytes sent to MQTT clients.",
	       bytes_sent),
	FIGURE("deliveries_total", "counter",
	       "Deliveries to sessions: one per matching session per message.",
	       deliveries),
	FIGURE("queued_messages", "gauge",
	       "Messages waiting in session queues (offline or window full).",
	       queued),
	FIGURE("inflight_messages", "gauge",
	       "QoS 1 and 2 messages sent and not yet acknowledged.", inflight),
	{"messages_dropped_total", "counter",
	 "Deliveries dropped, by reason (their sum is $SYS "
	 "publish/messages/dropped).",
	 "Deliveries dropped, by shard and reason.", OFF(dropped), "reason",
	 drop_reason_names, DROP_REASONS},
};

/* Totals only. */
static const struct shard_metric tls_handshakes_metric = {
	"tls_handshakes_total", "counter", "TLS handshakes, by result.", NULL,
	OFF(tls_handshakes), "result", tls_result_names, TLS_HS_RESULTS,
};

static const unsigned metrics_codes[METRICS_STATUSES] = {
	[METRICS_200] = 200, [METRICS_400] = 400, [METRICS_404] = 404,
	[METRICS_405] = 405, [METRICS_408] = 408, [METRICS_431] = 431,
	[METRICS_500] = 500, [METRICS_503] = 503,
};

/* The series of one figure: shard == UINT_MAX gives the total over the
 * shards, otherwise that shard's value. */
static void shard_metric_series(struct mbuf *m, const struct broker *b,
				const struct shard_metric *sm, const char *name,
				unsigned shard)
{
	unsigned n = sm->label ? sm->nvalues : 1;

	for (unsigned r = 0; r < n; r++) {
		size_t off = sm->off + r * sizeof(uint64_t);
		char labels[96];
		int len = 0;

		if (shard != UINT_MAX)
			len = snprintf(labels, sizeof(labels), "shard=\"%u\"%s",
				       shard, sm->label ? "," : "");
		else
			labels[0] = '\0';
		if (sm->label)
			snprintf(labels + len, sizeof(labels) - (size_t)len,
				 "%s=\"%s\"", sm->label, sm->values[r]);
		uint64_t v = shard == UINT_MAX ? stat_sum(b, off)
					       : stat_load(&b->shards[shard], off);
		mb_printf(m, "%s%s%s%s %llu\n", name, labels[0] ? "{" : "",
			  labels, labels[0] ? "}" : "", (unsigned long long)v);
	}
}

static void metrics_shard_figures(struct mbuf *m, const struct broker *b)
{
	char name[96];
	for (size_t k = 0; k < sizeof(shard_metrics) / sizeof(shard_metrics[0]);
	     k++) {
		const struct shard_metric *sm = &shard_metrics[k];
		snprintf(name, sizeof(name), "kite_%s", sm->name);
		mb_family(m, name, sm->type, sm->help);
		shard_metric_series(m, b, sm, name, UINT_MAX);
		snprintf(name, sizeof(name), "kite_shard_%s", sm->name);
		mb_family(m, name, sm->type,
			  sm->shard_help ? sm->shard_help : sm->help);
		for (unsigned i = 0; i < b->nshards; i++)
			shard_metric_series(m, b, sm, name, i);
	}
}

static void metrics_tls(struct mbuf *m, const struct broker *b)
{
	const struct shard_metric *hs = &tls_handshakes_metric;
	mb_family(m, "kite_tls_handshakes_total", hs->type, hs->help);
	shard_metric_series(m, b, hs, "kite_tls_handshakes_total", UINT_MAX);
	mb_family(m, "kite_tls_connections", "gauge",
		  "Open TLS connections: records in the kernel (kTLS) or in "
		  "userspace (OpenSSL).");
	mb_printf(m, "kite_tls_connections{mode=\"kernel\"} %lld\n",
		  (long long)stat_sum(b, OFF(tls_open_kernel)));
	mb_printf(m, "kite_tls_connections{mode=\"userspace\"} %lld\n",
		  (long long)stat_sum(b, OFF(tls_open_user)));
	mb_family(m, "kite_tls_kernel_offloaded_total", "counter",
		  "Connections handed to kernel TLS ($SYS tls/kernel_offloaded).");
	mb_printf(m, "kite_tls_kernel_offloaded_total %llu\n",
		  (unsigned long long)stat_sum(b, OFF(ktls_connections)));
}

static void metrics_counter(struct mbuf *m, const char *name,
			    const char *help, uint64_t v)
{
	mb_family(m, name, "counter", help);
	mb_printf(m, "%s %llu\n", name, (unsigned long long)v);
}

static void metrics_gauge(struct mbuf *m, const char *name, const char *help,
			  long long v)
{
	mb_family(m, name, "gauge", help);
	mb_printf(m, "%s %lld\n", name, v);
}

static void metrics_persistence(struct mbuf *m, const struct broker *b)
{
	metrics_gauge(m, "kite_persistence_enabled",
		      "1 when persistence is on.", b->cfg->persistence);
	metrics_counter(m, "kite_persistence_bytes_written_total",
			"Bytes written to the persistence logs.",
			stat_sum(b, OFF(persist_bytes_written)));
	metrics_counter(m, "kite_persistence_write_errors_total",
			"Failed writes or syncs of the persistence logs.",
			stat_sum(b, OFF(persist_write_errors)));
	metrics_counter(m, "kite_persistence_compactions_total",
			"Compactions of the persistence logs.",
			stat_sum(b, OFF(persist_compactions)));
	metrics_counter(m, "kite_persistence_acknowledgements_withheld_total",
			"Acknowledgements that waited for the log to be durable.",
			stat_sum(b, OFF(persist_acks_withheld)));
}

static void metrics_flood_filter(struct mbuf *m, const struct broker *b)
{
	struct flood_filter_stats st;
	flood_filter_stats(b->flood, &st); /* zeros without a filter */
	metrics_gauge(m, "kite_flood_filter_loaded",
		      "1 when the XDP flood filter is attached.", b->flood != NULL);
	metrics_counter(m, "kite_flood_filter_passed_total",
			"Packets the XDP filter let through.", st.passed);
	mb_family(m, "kite_flood_filter_dropped_total", "counter",
		  "Packets the XDP filter dropped, by reason.");
	mb_printf(m, "kite_flood_filter_dropped_total{reason=\"rate\"} %llu\n",
		  (unsigned long long)st.dropped_rate);
	mb_printf(m, "kite_flood_filter_dropped_total{reason=\"blocked\"} %llu\n",
		  (unsigned long long)st.dropped_block);
	metrics_counter(m, "kite_flood_filter_blocks_added_total",
			"Sources this broker blocked.", st.blocks_added);
	metrics_counter(m, "kite_flood_filter_sources_allowed_total",
			"Sources allowed after a good CONNECT.",
			st.sources_allowed);
}

/* Resident and virtual size from /proc/self/statm (pages). */
static void metrics_process(struct mbuf *m, const struct broker *b)
{
	unsigned long long vm = 0, rss = 0;
	char buf[128];
	int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0) {
			buf[n] = '\0';
			if (sscanf(buf, "%llu %llu", &vm, &rss) != 2)
				vm = rss = 0;
		}
	}
	unsigned long long page = (unsigned long long)sysconf(_SC_PAGESIZE);
	metrics_gauge(m, "process_resident_memory_bytes",
		      "Resident memory size in bytes.", (long long)(rss * page));
	metrics_gauge(m, "process_virtual_memory_bytes",
		      "Virtual memory size in bytes.", (long long)(vm * page));
	metrics_gauge(m, "process_start_time_seconds",
		      "Start time of the process since unix epoch in seconds.",
		      (long long)b->start_s);
}

static void metrics_render(struct mbuf *m, const struct broker *b)
{
	mb_family(m, "kite_build_info", "gauge",
		  "Always 1; the version ($SYS version) as a label.");
	mb_printf(m, "kite_build_info{version=\"%s\"} 1\n", KITE_VERSION);
	metrics_gauge(m, "kite_uptime_seconds", "Seconds since the broker "
		      "started ($SYS uptime).",
		      (long long)(time(NULL) - (time_t)b->start_s));
	metrics_gauge(m, "kite_shards", "Shards (threads, one io_uring each).",
		      b->nshards);
	metrics_shard_figures(m, b);
	uint64_t connected = stat_sum(b, OFF(clients_connected));
	uint64_t total = stat_sum(b, OFF(sessions));
	metrics_gauge(m, "kite_sessions_disconnected",
		      "Sessions without a connection ($SYS clients/disconnected).",
		      (long long)(total > connected ? total - connected : 0));
	metrics_gauge(m, "kite_retained_messages",
		      "Retained messages ($SYS retained messages/count).",
		      (long long)retain_count(b->retained));
	mb_family(m, "kite_clients_refused_total", "counter",
		  "Clients refused at accept, by reason.");
	mb_printf(m, "kite_clients_refused_total{reason=\"max_connections\"} "
		  "%llu\n", (unsigned long long)stat_sum(b, OFF(refused_max_connections)));
	mb_printf(m, "kite_clients_refused_total{reason=\"no_resources\"} "
		  "%llu\n", (unsigned long long)stat_sum(b, OFF(refused_no_resources)));
	metrics_tls(m, b);
	metrics_persistence(m, b);
	metrics_flood_filter(m, b);
	metrics_process(m, b);
	mb_family(m, "kite_metrics_requests_total", "counter",
		  "Requests to the metrics listener, by status code (this one "
		  "not yet counted).");
	for (unsigned i = 0; i < METRICS_STATUSES; i++)
		mb_printf(m, "kite_metrics_requests_total{code=\"%u\"} %llu\n",
			  metrics_codes[i],
			  (unsigned long long)stat_sum(b, OFF(metrics_answers[i])));
}

/* ---- the connection ------------------------------------------------------ */

static uint64_t scrape_ud(const struct scrape *sc, unsigned slot,
			  enum scrape_op op)
{
	return ud_pack(UD_METRICS, slot | (unsigned)op << 8, sc->gen);
}

static unsigned scrape_slot(struct shard *s, const struct scrape *sc)
{
	for (unsigned i = 0; i < SCRAPE_SLOTS; i++)
		if (s->scrapes[i] == sc)
			return i;
	assert(!"scrape not in its shard");
	return 0;
}

static void scrape_arm_recv(struct shard *s, struct scrape *sc)
{
	assert(!sc->recv_busy);
	struct io_uring_sqe *sqe = shard_sqe(s);
	if (sc->state == SC_READING)
		io_uring_prep_recv(sqe, sc->fd, sc->in + sc->in_len,
				   sizeof(sc->in) - sc->in_len, 0);
	else
		io_uring_prep_recv(sqe, sc->fd, sc->in, sizeof(sc->in), 0);
	io_uring_sqe_set_data64(sqe, scrape_ud(sc, scrape_slot(s, sc), SC_OP_RECV));
	sc->recv_busy = true;
}

static void scrape_arm_send(struct shard *s, struct scrape *sc)
{
	assert(!sc->send_busy && sc->out_off < sc->out_len);
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_send(sqe, sc->fd, sc->out + sc->out_off,
			   sc->out_len - sc->out_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, scrape_ud(sc, scrape_slot(s, sc), SC_OP_SEND));
	sc->send_busy = true;
}

static void scrape_shutdown(struct shard *s, struct scrape *sc, int how)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_shutdown(sqe, sc->fd, how);
	io_uring_sqe_set_data64(sqe,
				scrape_ud(sc, scrape_slot(s, sc), SC_OP_SHUTDOWN));
	sc->shutdowns++;
}

/* The descriptor closes once no request on it is left in the ring (its
 * number could otherwise be reused under a late completion). */
static void scrape_release_if_idle(struct shard *s, struct scrape *sc)
{
	if (sc->state != SC_CLOSING || sc->recv_busy || sc->send_busy ||
	    sc->shutdowns)
		return;
	unsigned slot = scrape_slot(s, sc);
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_close(sqe, sc->fd);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_CLOSE, 0, 0));
	if (sc->counted)
		atomic_fetch_sub(&s->b->listener_conns[sc->li], 1);
	free(sc->out);
	free(sc);
	s->scrapes[slot] = NULL;
}

static void scrape_end(struct shard *s, struct scrape *sc)
{
	if (sc->state == SC_CLOSING)
		return;
	sc->state = SC_CLOSING;
	if (sc->recv_busy || sc->send_busy)
		scrape_shutdown(s, sc, SHUT_RDWR); /* they complete now */
	scrape_release_if_idle(s, sc);
}

static const char *const status_text[METRICS_STATUSES] = {
	[METRICS_200] = "200 OK",
	[METRICS_400] = "400 Bad Request",
	[METRICS_404] = "404 Not Found",
	[METRICS_405] = "405 Method Not Allowed",
	[METRICS_408] = "408 Request Timeout",
	[METRICS_431] = "431 Request Header Fields Too Large",
	[METRICS_500] = "500 Internal Server Error",
	[METRICS_503] = "503 Service Unavailable",
};

/* Errors: a short text body naming the problem. Built into the heap so
 * every answer is freed the same way; too small to matter. */
static void scrape_answer(struct shard *s, struct scrape *sc,
			  enum metrics_status st, struct mbuf *body, bool head)
{
	stat_add(&s->stats.metrics_answers[st], 1);
	struct mbuf m = {0};
	const char *text = status_text[st] + 4;
	mb_printf(&m, "HTTP/1.1 %s\r\n", status_text[st]);
	if (st == METRICS_200)
		mb_printf(&m, "Content-Type: text/plain; version=0.0.4; "
			  "charset=utf-8\r\n");
	else
		mb_printf(&m, "Content-Type: text/plain; charset=utf-8\r\n");
	if (st == METRICS_405)
		mb_printf(&m, "Allow: GET, HEAD\r\n");
	if (st == METRICS_503)
		mb_printf(&m, "Retry-After: 1\r\n");
	size_t blen = body ? body->len : strlen(text) + 1;
	mb_printf(&m, "Content-Length: %zu\r\nConnection: close\r\n\r\n", blen);
	if (!head) {
		if (body)
			mb_printf(&m, "%.*s", (int)body->len, body->p);
		else
			mb_printf(&m, "%s\n", text);
	}
	if (m.full) { /* out of memory: no answer, only the close */
		free(m.p);
		scrape_end(s, sc);
		return;
	}
	sc->out = m.p;
	sc->out_len = m.len;
	sc->out_off = 0;
	sc->state = SC_WRITING;
	scrape_arm_send(s, sc);
}

static void scrape_serve(struct shard *s, struct scrape *sc, bool head)
{
	struct mbuf body = {0};
	metrics_render(&body, s->b);
	if (body.full) {
		free(body.p);
		log_msg(KITE_LOG_ERR, "metrics: the answer would exceed %u bytes",
			METRICS_OUTPUT_MAX);
		scrape_answer(s, sc, METRICS_500, NULL, head);
		return;
	}
	scrape_answer(s, sc, METRICS_200, &body, head);
	free(body.p);
}

static bool token_char(char c)
{
	return c >= 'A' && c <= 'Z';
}

/* The request line of a complete head: "METHOD SP TARGET SP HTTP/1.x". */
static void scrape_on_request(struct shard *s, struct scrape *sc, size_t eol)
{
	char *line = sc->in;
	if (eol && line[eol - 1] == '\r')
		eol--;
	line[eol] = '\0';
	char *sp1 = strchr(line, ' ');
	char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	if (!sp1 || !sp2 || sp1 == line || sp2 == sp1 + 1 ||
	    strchr(sp2 + 1, ' ') || strncmp(sp2 + 1, "HTTP/1.", 7) ||
	    strlen(sp2 + 1) != 8) {
		scrape_answer(s, sc, METRICS_400, NULL, false);
		return;
	}
	for (char *p = line; p < sp1; p++)
		if (!token_char(*p)) {
			scrape_answer(s, sc, METRICS_400, NULL, false);
			return;
		}
	*sp1 = *sp2 = '\0';
	bool head = !strcmp(line, "HEAD");
	if (!head && strcmp(line, "GET")) {
		scrape_answer(s, sc, METRICS_405, NULL, false);
		return;
	}
	char *target = sp1 + 1;
	size_t plen = strcspn(target, "?");
	if (plen != 8 || strncmp(target, "/metrics", 8)) {
		scrape_answer(s, sc, METRICS_404, NULL, head);
		return;
	}
	scrape_serve(s, sc, head);
}

/* Bytes arrived while reading the request. */
static void scrape_on_input(struct shard *s, struct scrape *sc)
{
	/* The head ends with an empty line; a bare LF is tolerated
	 * (RFC 9112 2.2). */
	const char *end = NULL;
	for (uint32_t i = 0; i + 1 < sc->in_len && !end; i++)
		if (sc->in[i] == '\n' &&
		    (sc->in[i + 1] == '\n' ||
		     (sc->in[i + 1] == '\r' && i + 2 < sc->in_len &&
		      sc->in[i + 2] == '\n')))
			end = sc->in + i;
	if (memchr(sc->in, '\0', sc->in_len)) {
		scrape_answer(s, sc, METRICS_400, NULL, false);
		return;
	}
	if (end) {
		size_t eol = (size_t)((const char *)memchr(sc->in, '\n', sc->in_len) -
				      sc->in);
		scrape_on_request(s, sc, eol);
		return;
	}
	if (sc->in_len == sizeof(sc->in)) {
		scrape_answer(s, sc, METRICS_431, NULL, false);
		return;
	}
	scrape_arm_recv(s, sc);
}

static void scrape_on_recv(struct shard *s, struct scrape *sc, int res)
{
	sc->recv_busy = false;
	switch (sc->state) {
	case SC_READING:
		if (res <= 0) {
			scrape_end(s, sc);
			return;
		}
		sc->in_len += (uint32_t)res;
		scrape_on_input(s, sc);
		return;
	case SC_LINGER:
		sc->drained += res > 0 ? (uint32_t)res : 0;
		if (res <= 0 || sc->drained > METRICS_DRAIN_MAX)
			scrape_end(s, sc);
		else
			scrape_arm_recv(s, sc);
		return;
	case SC_WRITING: /* input after the request: read in SC_LINGER */
		return;
	default:
		scrape_release_if_idle(s, sc);
		return;
	}
}

static void scrape_on_send(struct shard *s, struct scrape *sc, int res)
{
	sc->send_busy = false;
	if (sc->state != SC_WRITING) {
		scrape_release_if_idle(s, sc);
		return;
	}
	if (res <= 0) {
		scrape_end(s, sc);
		return;
	}
	sc->out_off += (size_t)res;
	if (sc->out_off < sc->out_len) {
		scrape_arm_send(s, sc);
		return;
	}
	/* All sent: half-close, then read until the client closes, so that
	 * its unread input does not turn our close into a reset that could
	 * destroy the answer before it is read. */
	sc->state = SC_LINGER;
	scrape_shutdown(s, sc, SHUT_WR);
	if (!sc->recv_busy)
		scrape_arm_recv(s, sc);
}

void metrics_on_cqe(struct shard *s, uint32_t id, uint32_t gen, int res)
{
	unsigned slot = id & 0xff;
	enum scrape_op op = (enum scrape_op)(id >> 8);
	assert(slot < SCRAPE_SLOTS);
	struct scrape *sc = s->scrapes[slot];
	/* Every request of a scrape completes before its slot is reused. */
	assert(sc && sc->gen == gen);
	switch (op) {
	case SC_OP_RECV:
		scrape_on_recv(s, sc, res);
		break;
	case SC_OP_SEND:
		scrape_on_send(s, sc, res);
		break;
	case SC_OP_SHUTDOWN:
		sc->shutdowns--;
		scrape_release_if_idle(s, sc);
		break;
	default:
		assert(!"unknown scrape operation");
	}
}

void metrics_on_accept(struct shard *s, unsigned li, int fd)
{
	const struct kite_listener_cfg *l = &s->cfg->listeners[li];
	uint32_t limit = METRICS_SCRAPES_MAX;
	if (l->max_connections >= 0 && (uint32_t)l->max_connections < limit)
		limit = (uint32_t)l->max_connections;
	unsigned slot = 0;
	while (slot < SCRAPE_SLOTS && s->scrapes[slot])
		slot++;
	struct scrape *sc = slot < SCRAPE_SLOTS && !s->stopping
				    ? malloc(sizeof(*sc))
				    : NULL;
	if (!sc) { /* beyond even the 503 slots: counted, not answered */
		stat_add(&s->stats.metrics_answers[METRICS_503], 1);
		close(fd);
		return;
	}
	memset(sc, 0, offsetof(struct scrape, in));
	sc->fd = fd;
	sc->gen = ++s->scrape_gen;
	sc->li = (uint8_t)li;
	sc->started_ms = s->now_ms;
	s->scrapes[slot] = sc;
	uint32_t n = atomic_fetch_add(&s->b->listener_conns[li], 1) + 1;
	if (n > limit) {
		atomic_fetch_sub(&s->b->listener_conns[li], 1);
		scrape_answer(s, sc, METRICS_503, NULL, false);
		return;
	}
	sc->counted = true;
	scrape_arm_recv(s, sc);
}

void metrics_tick(struct shard *s)
{
	for (unsigned i = 0; i < SCRAPE_SLOTS; i++) {
		struct scrape *sc = s->scrapes[i];
		if (!sc)
			continue;
		uint64_t age = s->now_ms - sc->started_ms;
		if (sc->state == SC_READING && age > METRICS_REQUEST_TIMEOUT_MS)
			scrape_answer(s, sc, METRICS_408, NULL, false);
		else if (sc->state != SC_CLOSING &&
			 age > METRICS_SCRAPE_TIMEOUT_MS)
			scrape_end(s, sc);
	}
}

/* After the shard's ring is gone: nothing can complete any more. */
void metrics_fini(struct shard *s)
{
	for (unsigned i = 0; i < SCRAPE_SLOTS; i++) {
		struct scrape *sc = s->scrapes[i];
		if (!sc)
			continue;
		close(sc->fd);
		free(sc->out);
		free(sc);
		s->scrapes[i] = NULL;
	}
}
