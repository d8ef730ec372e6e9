/* kite-bench: an MQTT load generator built to measure brokers.
 *
 * One process, one thread, one epoll loop holding thousands of client
 * connections in three roles: publishers, subscribers and idle clients.
 * Packets are built and parsed with core/codec.h only. Every payload carries
 * (send time, publisher index, sequence number) so subscribers measure
 * end-to-end latency and detect loss, duplicates and reordering per
 * publisher. See bench/README.md for what each scenario measures. */
#ifndef KITE_BENCH_H
#define KITE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <liburing.h>

#include "core/codec.h"

/* ---- limits ------------------------------------------------------------ */

#define KB_PORTS_MAX 8
#define KB_TOPIC_MAX 64
#define KB_CLIENT_ID_MAX 48
#define KB_NAME_MAX 64
#define KB_PAYLOAD_MIN 16	/* ts(8) + publisher(4) + seq(4) */
#define KB_PAYLOAD_MAX 65536
/* Largest packet the generator accepts from a broker. */
#define KB_PACKET_MAX (KB_PAYLOAD_MAX + 4096u)
/* One receive buffer shared by all connections: a recv lands here, whole
 * packets are handled in place and only a trailing partial packet is copied
 * out to its connection. Idle connections then cost no buffer at all. */
#define KB_RECV_SCRATCH (512u * 1024u)
/* A publisher stops producing while this much is unsent on its socket. */
#define KB_WBUF_SOFT (64u * 1024u)
/* A connection that has this much unsent is broken: the run fails. */
#define KB_WBUF_HARD (16u * 1024u * 1024u)
#define KB_EVENTS_MAX 1024
/* Publishes per loop turn at saturation, so receiving is never starved. */
#define KB_PUB_BATCH_MAX 512
/* Per-publisher window of unacknowledged messages (QoS 1/2 packet ids). */
#define KB_WINDOW_MAX 32768
#define KB_CONNS_MAX 1000000u
#define KB_CONNECT_TRIES_MAX 8
/* --uring: sends queued per io_uring_enter (more are split in batches). */
#define KB_URING_ENTRIES 1024

_Static_assert(KB_PACKET_MAX * 2 <= KB_RECV_SCRATCH,
	       "scratch must hold a leftover partial packet plus a full one");
_Static_assert(KB_WINDOW_MAX < 65535, "packet ids are slot + 1 <= 65535");
_Static_assert(KB_WBUF_SOFT < KB_WBUF_HARD, "soft limit below hard limit");
_Static_assert(KB_PAYLOAD_MIN <= 64, "default payload carries the header");

/* ---- histogram (HDR-style: log2 octaves, linear sub-buckets) ------------ */

/* 2^(KB_HIST_SUB_BITS-1) sub-buckets per octave: relative error < 1/64. */
#define KB_HIST_SUB_BITS 7
#define KB_HIST_BUCKETS ((64 - KB_HIST_SUB_BITS + 2) << (KB_HIST_SUB_BITS - 1))

struct kb_hist {
	uint64_t n;
	uint64_t min;
	uint64_t max;
	double sum;
	uint64_t bucket[KB_HIST_BUCKETS];
};

void kb_hist_reset(struct kb_hist *h);
void kb_hist_add(struct kb_hist *h, uint64_t v);
/* Value at quantile q (0..1): the midpoint of the bucket holding it,
 * clamped to [min, max]. 0 when empty. */
uint64_t kb_hist_quantile(const struct kb_hist *h, double q);
/* Exposed for the self-test. */
uint32_t kb_hist_index(uint64_t v);
uint64_t kb_hist_bucket_low(uint32_t idx);
uint64_t kb_hist_bucket_high(uint32_t idx);

/* ---- /proc and process helpers ----------------------------------------- */

/* utime+stime of every thread of pid, in seconds. -1 if unreadable. */
double kb_proc_cpu_s(pid_t pid);
/* VmRSS / VmHWM of pid in KiB. -1 if unreadable. */
long kb_proc_rss_kb(pid_t pid);
long kb_proc_hwm_kb(pid_t pid);
/* CPU time this process used, in seconds. */
double kb_self_cpu_s(void);
/* CPU time of the calling thread, in ns (a syscall, not the vDSO). */
uint64_t kb_thread_cpu_ns(void);
/* Raises RLIMIT_NOFILE so at least `need` descriptors can be open.
 * Returns the resulting soft limit. */
uint64_t kb_raise_nofile(uint64_t need);
/* One CPU's busy and total ticks from /proc/stat. -1 if unknown. */
int kb_proc_cpu_ticks(int cpu, uint64_t *busy, uint64_t *total);
/* The CPU pid is pinned to, or -1 when it may run on several. */
int kb_proc_pinned_cpu(pid_t pid);
uint64_t kb_now_ns(void);

/* ---- options ----------------------------------------------------------- */

enum kb_topology {
	KB_TOPO_FANOUT, /* P publishers -> one topic -> S subscribers */
	KB_TOPO_FANIN,	/* P devices on devices/ID/telemetry -> S on devices/+/telemetry */
	KB_TOPO_P2P,	/* pair i: publisher i -> p2p/i -> subscriber i */
	KB_TOPO_IDLE,	/* N connected clients that do nothing */
	KB_TOPO_STORM,	/* N slots: connect, (TLS), CONNECT, SUBSCRIBE,
			   DISCONNECT, wait for the close, again */
};

struct kb_opts {
	char name[KB_NAME_MAX];
	char host[64];
	uint16_t ports[KB_PORTS_MAX];
	unsigned nports;
	enum kb_topology topo;
	uint32_t pubs, subs, idle;
	uint8_t qos;
	uint8_t version; /* 4 = MQTT 3.1.1, 5 = MQTT 5.0 */
	uint32_t payload;
	double rate; /* total publishes per second; 0 = saturation */
	uint32_t window; /* per publisher, messages not yet delivered/acked */
	uint64_t max_outstanding; /* deliveries in flight over all publishers */
	uint32_t burst; /* saturation: messages per publisher per loop turn */
	uint32_t poll_us; /* saturation: minimum time between polls */
	bool busy_poll;	  /* never sleep while publishing or draining */
	double warmup_s, duration_s, drain_s, setup_s, hold_s, timeout_s;
	double stall_s; /* no delivery for this long at saturation: forgive */
	pid_t broker_pid;
	uint32_t connect_concurrency;
	uint16_t keepalive_s;
	double gen_bound_pct;
	bool tls;
	const char *cafile, *cert, *key, *cert_dir, *cert_prefix;
	uint32_t cert_count; /* --cert-dir: use dir/clients/PREFIX1..N */
	const char *tls_version; /* NULL: 1.2 or 1.3, whatever is agreed */
	/* Each new connection offers the session (ticket) of the last one
	 * that used its client identity: a fleet reconnecting. */
	bool tls_resume;
	/* Persistent sessions: clean session 0 (3.1.1) / clean start 0 with
	 * a session expiry (5.0) for every client, so a broker with
	 * persistence keeps (and logs) their subscriptions and queues. */
	bool persistent;
	bool ws; /* MQTT over WebSockets (ws://, or wss:// with --tls) */
	uint32_t session_expiry_s; /* MQTT 5 with --persistent */
	bool quiet;
	bool uring; /* plain TCP sends through io_uring, batched per turn */
};

/* ---- connections ------------------------------------------------------- */

enum kb_role { KB_ROLE_SUB, KB_ROLE_PUB, KB_ROLE_IDLE };

enum kb_state {
	KB_ST_QUEUED,	     /* not opened yet */
	KB_ST_TCP,	     /* non-blocking connect in progress */
	KB_ST_HANDSHAKE,     /* transport handshake (TLS later) */
	KB_ST_WS_UPGRADE,    /* --ws: GET sent, waiting for 101 */
	KB_ST_CONNECT_SENT,  /* waiting for CONNACK */
	KB_ST_SUBSCRIBE_SENT, /* waiting for SUBACK */
	KB_ST_READY,
	KB_ST_DISCONNECTING, /* storm: DISCONNECT sent, waiting for the close */
	KB_ST_CLOSED,
};

struct kb_conn;
struct kb_ws;

/* How bytes reach the socket. Plain TCP now; a TLS transport (OpenSSL over
 * the same non-blocking fd) plugs in here without touching the MQTT side.
 * recv returns bytes moved, 0 for EOF, or -1 with errno (EAGAIN when the
 * socket is not ready). start returns 1 when the
 * transport is ready for MQTT bytes, 0 while a handshake is in progress
 * (it then wants the events in c->tp_wants), -1 on failure. */
struct kb_transport {
	const char *name;
	int (*start)(struct kb_conn *c);
	ssize_t (*recv)(struct kb_conn *c, uint8_t *buf, size_t len);
	void (*close)(struct kb_conn *c);
	/* NULL, or: turns wbuf[wseal, wlen) into what goes on the wire
	 * (TLS records) in place. Sends then move wire bytes only, the same
	 * way for every transport, and a turn's sends leave together
	 * through io_uring. -1: broken. */
	int (*seal)(struct kb_conn *c);
};

extern const struct kb_transport kb_transport_plain;
extern const struct kb_transport kb_transport_tls;

/* tls.c */
int kb_tls_init(const struct kb_opts *o, char *err, size_t errlen);
const char *kb_tls_last_error(void);
uint64_t kb_tls_handshakes(void);
const char *kb_tls_version(void);
uint64_t kb_tls_resumed(void);
uint32_t kb_tls_identities(void);

struct kb_conn {
	int fd;
	uint8_t role;  /* enum kb_role */
	uint8_t state; /* enum kb_state */
	bool out_armed; /* EPOLLOUT registered */
	bool dirty;	/* on the flush list */
	uint8_t connect_tries;
	uint16_t port;
	uint32_t role_idx; /* index into pubs[] or subs[] */
	uint32_t tp_wants; /* epoll events a handshake waits for */
	bool tp_more;	   /* the transport holds input: read again now */
	bool tp_flush;	   /* the transport has output of its own to send */
	/* Trailing partial packet from the last recv. */
	uint8_t *rbuf;
	uint32_t rlen;
	/* Unsent bytes are wbuf[woff, wlen); with a sealing transport,
	 * wbuf[wseal, wlen) is still plaintext. */
	uint8_t *wbuf;
	uint32_t woff, wlen, wcap, wseal;
	uint64_t last_tx_ns;
	const struct kb_transport *tp;
	void *tp_state;
	struct kb_ws *ws;  /* --ws: framing state (ws.c) */
	uint8_t ws_room;   /* header room left by the last kb_wbuf_reserve */
};

/* ---- roles ------------------------------------------------------------- */

struct kb_pub {
	uint32_t conn;
	uint32_t fanout; /* subscribers that must get each message */
	uint32_t seq;	 /* next sequence number == messages sent */
	uint32_t unacked;
	uint32_t window_eff; /* min(window, server receive maximum) */
	uint64_t out_deliv; /* deliveries sent but not seen by subscribers */
	bool queued;	    /* on kb.ready */
	uint8_t *slots;	 /* QoS>0: per packet id, 0 free, 1 wait PUBACK or
			    PUBREC, 2 wait PUBCOMP */
	uint16_t topic_len;
	char topic[KB_TOPIC_MAX];
};

/* What one subscriber knows about one publisher it expects. */
struct kb_track {
	uint32_t next; /* highest sequence seen + 1 */
	uint32_t gaps; /* sequence numbers skipped and not seen since */
};

struct kb_sub {
	uint32_t conn;
	uint32_t pub_lo, pub_n; /* expects publishers [pub_lo, pub_lo+pub_n) */
	uint64_t track_off;	/* into kb.tracks */
	uint64_t recv;
	uint16_t filter_len;
	char filter[KB_TOPIC_MAX];
};

/* ---- the run ----------------------------------------------------------- */

enum kb_phase {
	KB_PH_SETUP_SUBS,
	KB_PH_SETUP_PUBS,
	KB_PH_WARMUP,
	KB_PH_MEASURE,
	KB_PH_DRAIN,
	KB_PH_HOLD, /* idle scenario: all connected, measuring */
	KB_PH_DONE,
};

struct kb_counters {
	uint64_t sent, recv, unique, dups, dups_flagged, reordered;
	uint64_t unexpected, bad_acks, protocol_errors;
	uint64_t session_present; /* CONNACK said so for a fresh client id */
	uint64_t conn_failures, conn_closed, stalls;
	uint64_t acks; /* PUBACK or PUBCOMP completing a publish */
};

#define KB_ERRORS_MAX 8

struct kb {
	struct kb_opts o;
	int epfd;
	bool uring;
	struct io_uring ring;
	struct kb_conn *conns;
	uint32_t nconns;
	uint32_t *flush; /* connections with bytes to send this turn */
	uint32_t nflush;
	uint8_t *scratch;
	uint8_t payload[KB_PAYLOAD_MAX];

	struct kb_pub *pubs;
	struct kb_sub *subs;
	struct kb_track *tracks;
	uint64_t ntracks;
	uint32_t npubs, nsubs;

	enum kb_phase phase;
	uint64_t phase_start_ns;
	/* Setup: connections are opened in conns[] order, a bounded number
	 * at a time (brokers' listen backlogs are small). */
	uint32_t open_next, open_end, setup_inflight, setup_ready;
	uint64_t setup_start_ns, setup_end_ns;

	/* Pacing. */
	double tokens;
	uint64_t tokens_ns;
	/* Publishers that may be able to send, in round-robin order: one
	 * goes on when something that blocked it eases (a delivery or ack
	 * credits its window, its socket drains, it finished setup), so a
	 * turn never scans thousands of publishers that cannot send. */
	uint32_t *ready;
	uint32_t ready_head, ready_n;
	uint64_t g_out; /* deliveries in flight */
	uint64_t expected; /* sum over publishers of sent * fanout */
	uint64_t last_progress_ns;
	uint64_t last_ping_scan_ns;

	/* Measurement window. */
	uint64_t win_start_ns, win_end_ns;
	double broker_cpu0, broker_cpu1, self_cpu0, self_cpu1;
	long rss_before_kb, rss_start_kb, rss_end_kb, hwm_end_kb;
	/* Who else used our two CPUs during the window (/proc/stat). */
	int gen_cpu, broker_cpu;
	/* The broker may run on several CPUs (not pinned to one): broker_cpu
	 * is then another CPU it may use, and other processes' load is
	 * counted over gen_cpu and broker_cpu together. */
	bool broker_spread;
	uint64_t gen_busy0, gen_total0, gen_busy1, gen_total1;
	uint64_t brk_busy0, brk_total0, brk_busy1, brk_total1;
	uint64_t sent_win, recv_win;
	/* Transport send and receive calls (syscalls over plain TCP), all
	 * run long; the window's share is io_*1 - io_*0. */
	uint64_t io_sends, io_recvs, io_polls;
	uint64_t io_sends0, io_recvs0, io_polls0, io_sends1, io_recvs1, io_polls1;
	uint64_t spin_ns; /* busy-poll: CPU time of turns with nothing to do */
	uint64_t spin_from; /* thread CPU time when the idle stretch began */
	struct kb_hist lat;

	/* Storm: connect-subscribe-disconnect cycles completed. */
	uint64_t cycles, cycles_win;
	const struct kb_transport *tp;

	struct kb_counters c;
	unsigned nerrors;
	char errors[KB_ERRORS_MAX][160];
	bool fatal;
	pid_t run_id; /* in client ids, so runs never take over sessions */
};

/* net.c: connections and the loop's I/O. */
int kb_net_init(struct kb *kb);
int kb_conn_open(struct kb *kb, uint32_t idx);
void kb_conn_close(struct kb *kb, uint32_t idx, bool graceful);
/* Room for n more bytes at the end of the send buffer; commit afterwards.
 * Over WebSockets each commit becomes one masked binary frame. */
uint8_t *kb_wbuf_reserve(struct kb *kb, struct kb_conn *c, size_t n);
void kb_wbuf_commit(struct kb *kb, struct kb_conn *c, size_t n);
/* The same without framing: bytes go to the socket as they are. */
uint8_t *kb_wbuf_reserve_raw(struct kb *kb, struct kb_conn *c, size_t n);
void kb_wbuf_commit_raw(struct kb *kb, struct kb_conn *c, size_t n);
/* send(2)s wbuf[woff, wlen), which holds wire bytes only, until it is
 * empty or the socket is full. Returns the calls made, -1 when the
 * connection died. */
int kb_conn_push(struct kb_conn *c);
void kb_handle_event(struct kb *kb, uint32_t idx, uint32_t events,
		     uint64_t now);
void kb_flush_all(struct kb *kb);
static inline uint32_t kb_conn_pending(const struct kb_conn *c)
{
	return c->wlen - c->woff;
}

/* ws.c: RFC 6455 client framing between net.c and the transport. An
 * incomplete frame header or control frame is kept per connection. */
#define KB_WS_PEND_MAX 136
/* Allocates the state and queues the upgrade request (raw). */
int kb_ws_start(struct kb *kb, struct kb_conn *c);
void kb_ws_free(struct kb_conn *c);
bool kb_ws_framing(const struct kb_conn *c);
/* Header bytes a frame of at most n payload bytes needs (mask included). */
size_t kb_ws_header_room(size_t n);
/* Frames the n bytes at f + room in place; returns the frame length. */
size_t kb_ws_frame(uint8_t *f, size_t room, uint8_t opcode, size_t n);
/* The upgrade answer in buf: 1 when accepted (*used = head length), 0 when
 * incomplete, -1 when refused or malformed (reported). */
int kb_ws_upgrade_input(struct kb *kb, struct kb_conn *c, const uint8_t *buf,
			size_t len, size_t *used);
/* Copies the kept partial frame to dst (room KB_WS_PEND_MAX); its length. */
size_t kb_ws_take_pending(struct kb_conn *c, uint8_t *dst);
/* Unframes buf in place: the payload length left at buf, -1 on a protocol
 * error (reported), -2 when the server sent CLOSE. */
ssize_t kb_ws_unframe(struct kb *kb, struct kb_conn *c, uint8_t *buf,
		      size_t len);

/* client.c: the MQTT side, driven by net.c. */
void kb_client_established(struct kb *kb, uint32_t idx, uint64_t now);
/* Handles every whole packet in buf; returns bytes consumed, or -1 when
 * the connection must be closed. */
ssize_t kb_client_input(struct kb *kb, uint32_t idx, const uint8_t *buf,
			size_t len, uint64_t now);
void kb_client_closed(struct kb *kb, uint32_t idx);
enum kb_pub_block {
	KB_PUB_OK,
	KB_PUB_BLOCKED,	    /* by its own window, socket or state */
	KB_PUB_BLOCKED_ALL, /* by max_outstanding: every publisher waits */
};
enum kb_pub_block kb_pub_can_send(const struct kb *kb, const struct kb_pub *p);
/* Puts publisher pidx on the ready queue unless it is there already. */
void kb_pub_wake(struct kb *kb, uint32_t pidx);
void kb_pub_send(struct kb *kb, uint32_t pidx, uint64_t now);
void kb_client_ping(struct kb *kb, uint32_t idx, uint64_t now);
void kb_client_disconnect(struct kb *kb, uint32_t idx);

/* kite-bench.c: a storm slot finished its cycle (the broker closed after
 * our DISCONNECT): count it and start the next connection. */
void kb_storm_cycle_done(struct kb *kb, uint32_t idx, uint64_t now);

/* kite-bench.c */
void kb_error(struct kb *kb, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
