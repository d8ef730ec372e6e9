/* Types of the shard (io/shard.c, driven by io/loop.c), the bottom of
 * io/: its io_uring and user_data encoding, the cross-shard rings and
 * their items, per-shard figures, and struct broker, the state every
 * shard sees (created by io/broker.c). Types only: any io/ unit may
 * include it (docs/ENGINE.md, "Layers"). */
#ifndef KITE_IO_SHARD_T_H
#define KITE_IO_SHARD_T_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/htab.h"
#include "core/log.h"
#include "tls/tls.h"

/* ---- limits -------------------------------------------------------------- */

/* Provided receive buffers per shard: what a multishot recv fills. An idle
 * connection holds none of them; the pages of the ring are touched as
 * bytes arrive (shard.recv_inc), not one page per receive. */
#define SHARD_RECV_BUFS 256
#define SHARD_RECV_BUF_SIZE 4096
#define SHARD_RING_ENTRIES 4096
/* Cross-shard ring slots per (source, destination) pair. */
#define XRING_SLOTS 4096
/* Items waiting behind a full ring, per destination: beyond the first
 * bound the shard stops reading from clients that publish until the
 * queue is down to the second; at the third, QoS 0 deliveries to that
 * shard are dropped (counted) rather than queued. */
#define XOVERFLOW_PAUSE_ITEMS (64u << 10)
#define XOVERFLOW_RESUME_ITEMS (16u << 10)
#define XOVERFLOW_MAX_ITEMS (1u << 20)
/* All partial packets of a shard's connections that have not completed
 * CONNECT, together: a flood of large CONNECTs costs at most this. */
#define SHARD_PRELOGIN_INPUT_MAX (16u << 20)
/* All partial packets of a shard's logged-in connections, together. One
 * packet may still be as large as max_packet_size allows, up to this. */
#define SHARD_INPUT_MAX (512u << 20)
#define SHARD_TICK_MS 250
/* Gathering (loop.c, shard_wait): while work keeps coming (the last
 * wait slept less than SHARD_GATHER_BUSY_US), a wait returns once
 * SHARD_GATHER_NR completions are ready or SHARD_GATHER_US have passed
 * with at least one, so one wake-up, one turn and one send per
 * connection serve several arrivals. A wait that finds nothing in that
 * time sleeps until the first completion as before: a lone message is
 * never held. 1 ms: at 10,000 messages a second, a fifth of the CPU
 * per message of waking per arrival, for about half a millisecond more
 * at the median (bench/RESULTS.md, fanin-q0-rate). */
#define SHARD_GATHER_US 1000
#define SHARD_GATHER_NR 64
#define SHARD_GATHER_BUSY_US 2000
/* Gathering only helps clients that send on their own clock (devices
 * reporting, a publisher at a rate). A client that waits for kite's
 * answer before it sends again (a QoS 1 publish at a time, a request
 * and its response) would wait the whole gathering wait on every round
 * trip: one message a millisecond instead of tens of thousands a second.
 * So the shard notes when it last sent to each connection slot (in
 * SHARD_SENT_UNIT_NS units, slots folded onto SHARD_SENT_SLOTS), and a
 * turn whose data came mostly from connections answered less than
 * SHARD_GATHER_BUSY_US before does not gather for its next wait. */
#define SHARD_SENT_SLOTS 4096
#define SHARD_SENT_UNIT_NS 16384
/* Concurrent scrapes per listener; each holds at most a request and one
 * answer. */
#define METRICS_SCRAPES_MAX 8
/* Slots per shard: the scrapes allowed, and as many again to say 503. */
#define METRICS_SCRAPE_SLOTS (2 * METRICS_SCRAPES_MAX)
/* Slots of a shard's io_uring file table, where clients are accepted
 * only to be closed at once when the process is out of descriptors: a
 * burst beyond it waits for the closes already queued, then goes on. */
#define SHARD_REFUSE_SLOTS 32
/* At SIGTERM a shard waits for the acknowledgements its connections owe,
 * if at most this many owe any (a busy broker stops at once), for at most
 * SHARD_STOP_ACK_WAIT_MS. */
#define SHARD_STOP_ACK_CONNS 64
#define SHARD_STOP_ACK_WAIT_MS 250
/* Clients accepted from one listener before the shard's other work
 * gets a turn. */
#define SHARD_ACCEPT_BATCH 256

_Static_assert(KITE_SHARDS_MAX <= 64, "shard masks are 64-bit");
_Static_assert((XRING_SLOTS & (XRING_SLOTS - 1)) == 0, "power of two");
_Static_assert((SHARD_RECV_BUFS & (SHARD_RECV_BUFS - 1)) == 0,
	       "buffer ring size must be a power of two");
_Static_assert(SHARD_RECV_BUF_SIZE <= UINT16_MAX, "shard.recv_off is 16-bit");

/* ---- io_uring user_data: the operation and its owner, no lookup ---------- */

enum ud_op {
	UD_ACCEPT = 1, /* id: 0 the poll of accept_ep, 1 a sweep to go on */
	UD_RECV,
	UD_SEND,
	UD_SHUTDOWN,
	UD_CLOSE,
	UD_CANCEL,
	UD_TICK,
	UD_WAKE, /* MSG_RING from another shard or the main thread */
	UD_PERSIST, /* id: enum persist_io (persist.c) */
	UD_METRICS, /* id: scrape slot and operation (metrics.c) */
	UD_REFUSE, /* id: listener index, gen: shard.refuse_gen; res: a slot */
	UD_BRIDGE,  /* id: bridge index on the shard; gen: attempt */
};

static inline uint64_t ud_pack(enum ud_op op, uint32_t id, uint32_t gen)
{
	return ((uint64_t)op << 56) | ((uint64_t)(id & 0xffffff) << 32) | gen;
}
static inline enum ud_op ud_op(uint64_t ud) { return (enum ud_op)(ud >> 56); }
static inline uint32_t ud_id(uint64_t ud) { return (ud >> 32) & 0xffffff; }
static inline uint32_t ud_gen(uint64_t ud) { return (uint32_t)ud; }

/* ---- cross-shard messages ------------------------------------------------ */

enum xkind {
	XK_DELIVER = 1, /* ptr: struct msg *, one reference travels */
	XK_KICK,	/* ptr: struct session * of the destination, taken over */
	XK_TAKEOVER,	/* ptr: struct takeover *: kick, then answer XK_TAKEN */
	XK_TAKEN,	/* ptr: struct takeover *, back: the new one may go on */
	XK_ADOPT,	/* ptr: struct conn * to adopt (persistent takeover) */
	XK_SHARE_JOIN,	  /* share.c: ptr is a struct share_op */
	XK_SHARE_LEAVE,
	XK_SHARE_DELIVER,
	XK_SHARE_RETRY,
	XK_SHARE_ACK,	  /* back to the member's shard: JOIN/LEAVE done */
	XK_DELIVER_T,	/* ptr: struct persist_ticket * (its msg travels) */
	XK_RETAIN_T,	/* to shard 0: log a retained change (ticket) */
	XK_TICKET,	/* to the ticket's origin: every holder let go */
	XK_Q2_RELEASE,	/* ptr: struct msg *: its QoS 2 deliveries may go */
	XK_STOP,	/* from main: close everything and exit the loop */
	XK_RELOAD,	/* from main: ptr is the new config snapshot */
	XK_BARRIER,	/* ptr: round << 8 | asking shard: answer once what
			   reached this shard before it has been served */
	XK_BARRIER_ACK, /* ptr: round << 8 | answering shard */
};

struct xitem {
	uint8_t kind;
	void *ptr;
};

struct xring {
	_Atomic uint32_t head; /* consumer */
	char pad0[60];
	_Atomic uint32_t tail; /* producer */
	char pad1[60];
	struct xitem items[XRING_SLOTS];
};

/* A client connected on shard `from` (connection id, gen) and took over
 * `old`, a session of the destination shard. */
struct takeover {
	struct takeover *next;
	struct session *old;
	uint32_t conn_id, conn_gen;
	/* The shard's wait count when it was queued: it runs after the next
	 * wait, whose deferred task work completes the receives of what the
	 * old connection had already sent (DEFER_TASKRUN runs them only in
	 * io_uring_enter). */
	uint32_t queued_at;
	uint8_t from;
};

struct xoverflow {
	struct xitem *items;
	uint32_t head, count, cap;
};

/* ---- shards --------------------------------------------------------------- */

/* Why a delivery was dropped (kite_messages_dropped_total{reason}). */
enum drop_reason {
	DROP_OFFLINE,	    /* QoS 0 to a session without a connection, or any
			       QoS to a clean bridge whose remote is away */
	DROP_QUEUE_FULL,    /* a slow consumer: wire queue or session queue
			       at its bound */
	DROP_UNDELIVERABLE, /* expired, or over the client's packet size */
	DROP_NO_MEMORY,
	DROP_REASONS,
};

enum tls_handshake_result {
	TLS_HS_OK,
	TLS_HS_ERROR,
	TLS_HS_TIMEOUT,
	TLS_HS_RESULTS,
};

/* Answers of the metrics listener (metrics.c), by status code. */
enum metrics_status {
	METRICS_200, METRICS_400, METRICS_404, METRICS_405, METRICS_408,
	METRICS_431, METRICS_500, METRICS_503,
	METRICS_STATUSES,
};

/* Per-shard figures. Each is written by its shard's thread only, so an
 * update is a relaxed load and store (stat_add), no locked instruction;
 * $SYS and the metrics listener read them from any shard with relaxed
 * loads. Gauges that a connection moving between shards changes on both
 * (tls_open_*) are only meaningful summed over the shards. */
struct shard_stats {
	_Atomic uint64_t msgs_received, msgs_sent, bytes_received, bytes_sent;
	_Atomic uint64_t clients_connected, sessions, subscriptions;
	_Atomic uint64_t msgs_dropped;
	_Atomic uint64_t ktls_connections;
	/* Clients refused at accept: max_connections, or no descriptor
	 * (or memory) left for them. */
	_Atomic uint64_t refused_max_connections, refused_no_resources;
	/* Durable state (persist.c). */
	_Atomic uint64_t persist_bytes_written, persist_write_errors;
	_Atomic uint64_t persist_compactions, persist_acks_withheld;
	/* Deliveries to sessions (one per matching session per message);
	 * drops by reason (their sum is msgs_dropped). */
	_Atomic uint64_t deliveries;
	_Atomic uint64_t dropped[DROP_REASONS];
	/* PUBLISH packets alone (msgs_* count every packet, as Mosquitto's
	 * $SYS messages/ figures do). */
	_Atomic uint64_t publish_received, publish_sent;
	/* Gauges: messages in session queues, and in flight (sent, not yet
	 * acknowledged), on this shard's sessions. */
	_Atomic uint64_t queued, inflight;
	_Atomic uint64_t tls_handshakes[TLS_HS_RESULTS];
	_Atomic uint64_t tls_open_kernel, tls_open_user;
	_Atomic uint64_t metrics_answers[METRICS_STATUSES];
};

/* For a counter of the calling shard (single writer). */
static inline void stat_add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}
static inline void stat_sub(_Atomic uint64_t *c, uint64_t n)
{
	stat_add(c, (uint64_t)0 - n);
}

struct broker;
struct conn;
struct delivery;
struct security;
struct send_ctx;
struct session;
struct share_group;
struct shard_log;
struct scrape;
struct bridge;
struct cluster;
struct gtrie;
struct retain_store;
struct trie;
struct flood_filter;

/* The pools of send contexts a shard keeps (io/conn.c). */
struct fan_cache;
enum send_ctx_class {
	SEND_CTX_SMALL,
	SEND_CTX_LARGE,
	SEND_CTX_COPY_SMALL,
	SEND_CTX_COPY,
	SEND_CTX_CLASSES,
	SEND_CTX_UNPOOLED = 0xff,
};

struct shard {
	unsigned idx;
	struct broker *b;
	/* This shard's view of the config: swapped by XK_RELOAD. */
	const struct kite_config *cfg;
	const struct security *sec;
	pthread_t thread;
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	uint8_t *recv_bufs;
	/* Incremental consumption (IOU_PBUF_RING_INC, Linux 6.12): a
	 * receive takes only the bytes it got from the ring's head buffer,
	 * the next one continues after them, and recv_off[bid] is where that
	 * is (always 0 on older kernels). Small receives (logins, acks,
	 * pings) then share pages: a burst of idle logins touches a few
	 * pages of the ring, not all 1 MiB. */
	uint16_t recv_off[SHARD_RECV_BUFS];
	int listen_fds[KITE_LISTENERS_MAX];
	struct __kernel_timespec tick_ts;
	/* The kernel takes a minimum wait (IORING_FEAT_MIN_TIMEOUT, 6.12),
	 * and how long the last wait slept (ns). */
	bool min_wait_ok;
	uint64_t last_wait_ns;
	/* When the turn began and what the shard last sent to each slot
	 * (loop_flush_dirty), in SHARD_SENT_UNIT_NS units; this turn's data
	 * receives and how many came from a connection answered just
	 * before; and the verdict: clients are waiting for kite, do not
	 * gather. */
	uint16_t turn_stamp;
	uint16_t sent_at[SHARD_SENT_SLOTS];
	uint32_t turn_recvs, turn_answered;
	bool clients_wait;

	struct conn **conns; /* by id */
	uint32_t conns_cap, conns_used;
	uint32_t *free_ids;
	uint32_t free_count;
	uint32_t next_gen;

	struct trie *trie;
	struct session *sessions;
	uint32_t pumps_deferred; /* sessions with pump_deferred */
	uint32_t reload_applied; /* the last reload_started switched to */
	struct htab by_id; /* session id -> session */
	struct share_group *share_groups; /* groups homed here */
	struct conn *dirty;
	/* What closing connections leave for conn_settle: a close can happen
	 * deep inside a fan-out (a subscriber out of memory), where routing
	 * a will or freeing a session would pull the ground from under the
	 * loop. */
	struct session *ending;
	struct will *wills_due, **wills_due_tail;
	uint32_t recv_bufs_used; /* returned to the ring at the turn's end */
	/* Bytes of partial-packet buffers, by budget (conn_input_charge). */
	uint64_t input_prelogin, input_active;

	uint64_t wake_mask; /* destinations pushed to this turn */
	struct xoverflow overflow[KITE_SHARDS_MAX];
	/* Connections whose input is paused (conn.in_paused), and whether
	 * a queue to another shard is past XOVERFLOW_PAUSE_ITEMS. */
	uint32_t input_paused;
	bool backlogged;
	uint32_t input_parked; /* connections parked for PARK_RELOAD */
	/* Sessions taken over by a client on another shard (XK_TAKEOVER),
	 * kicked once this turn's completions ran: what their old
	 * connection sent before the new one's CONNECT is served first, as
	 * by Mosquitto's one loop. */
	struct takeover *takeovers, **takeovers_tail;
	/* One of them waits only for the next turn, not for its old
	 * connection to be unparked (whatever unparks it wakes the shard):
	 * the shard's wait must not sleep. */
	bool takeover_next_turn;
	/* Barriers (shard_barrier_wait): SUBSCRIBEs parked until every other
	 * shard has served the input that reached it before them, so that a
	 * retained PUBLISH a client sent (and closed) before another client
	 * subscribed is stored when the subscription looks, as in
	 * Mosquitto's one loop. A round goes to every other shard at once;
	 * its waiters go on when all have answered. */
	struct barrier_waiter {
		uint32_t conn_id, conn_gen;
		uint32_t round; /* the round that covers it */
	} *barrier_waiters;
	uint32_t barrier_n, barrier_cap;
	uint32_t barrier_round; /* the last round posted (0: none yet) */
	uint32_t barrier_acks;	/* answers to it still to come */
	bool barrier_want;	/* a waiter needs the round after it */
	/* Rounds other shards asked this one to answer (0: none). */
	uint32_t barrier_ask[KITE_SHARDS_MAX];
	bool barrier_asked;
	uint32_t waits; /* io_uring waits so far (takeover.queued_at) */

	/* Finished send contexts for reuse, by class (conn.c). */
	struct send_ctx *ctx_pool[SEND_CTX_CLASSES];
	uint32_t ctx_pool_n[SEND_CTX_CLASSES];
	/* The fewest each pool held since the last tick: that many sat
	 * unused for a whole tick, and the tick frees them. */
	uint32_t ctx_pool_low[SEND_CTX_CLASSES];
	struct fan_cache *fan_cache; /* conn.c: the last fan-out's bytes */

	struct delivery *scratch;
	uint32_t scratch_len, scratch_cap;
	bool in_fanout; /* route_local never re-enters (conn_settle) */
	struct tls_buf tls_plain;  /* decrypted input of one receive */
	uint8_t *tls_scratch;	   /* plaintext gathered for one record */
	uint32_t match_gen;

	/* Accepting at the file limit (EMFILE...). Clients are turned away
	 * by accepting them into the ring's own file table (refuse_slots)
	 * and closing them; a kernel without it uses a spare descriptor,
	 * which another thread can take while it is closed (then reopened
	 * every tick). Listeners turning clients away until the next tick
	 * (refusing), those of them that turned one away since last armed
	 * (refuse_progress), those whose accept waits for the next tick
	 * (accept_paused), and why they refuse (refuse_err). A refusing
	 * accept's completions carry its generation: those of one already
	 * cancelled can arrive after the next one is armed. */
	bool refuse_slots;
	int spare_fd;
	uint64_t refusing, refuse_progress, accept_paused;
	/* Listening sockets are watched through an epoll set (accept_ep),
	 * whose readiness one multishot poll reports (shard.c,
	 * shard_watch_listener): listeners in the set, whether the poll is
	 * armed, and whether a sweep stopped at SHARD_ACCEPT_BATCH. */
	int accept_ep;
	uint64_t accept_watched;
	bool accept_poll_armed, accept_more;
	uint32_t refuse_gen[KITE_LISTENERS_MAX];
	int refuse_err;
	struct log_limit accept_log, max_conn_log;

	/* The shard's clock: the loop reads it once per turn into now_ms,
	 * which every handler and timer reads. A test drives a shard with
	 * its own clock (tests/io/harness.c). */
	uint64_t (*clock_ms)(void);
	uint64_t now_ms;
	uint64_t last_sys_ms;
	/* Earliest session expiry or delayed will on this shard (0: none),
	 * so the tick scans sessions only when one is due. */
	uint64_t next_session_deadline_ms;
	bool stopping;
	/* XK_STOP seen: the shard stops after one more pass over what the
	 * kernel already received (shard_main), and once the connections
	 * whose deliveries then awaited an acknowledgement have it, or at
	 * stop_acks_deadline_ms (shard_acks_awaited). */
	bool stop_pending;
	bool stop_acks_listed;
	uint8_t stop_acks_n;
	uint64_t stop_acks_deadline_ms;
	uint32_t stop_acks_id[SHARD_STOP_ACK_CONNS], stop_acks_gen[SHARD_STOP_ACK_CONNS];
	struct shard_stats stats;
	/* Scrapes of metrics listeners served by this shard (metrics.c). */
	struct scrape *scrapes[METRICS_SCRAPE_SLOTS];
	uint32_t scrape_gen;
	/* Durable state (persist.c); NULL without `persistence`. */
	struct shard_log *log;
	/* Sessions whose queue waits for a held QoS 2 message (by id). */
	uint64_t *q2_waiters;
	uint32_t q2_waiters_count, q2_waiters_cap;
	/* Bridges owned by this shard (bridge.c). */
	struct bridge **bridges;
	unsigned bridge_count;
};

/* Client-id registry entry: which shard a client's session lives on. */
struct client_entry {
	struct htab_link link;
	struct session *session; /* touched only by `shard` */
	unsigned shard;
	bool persistent;
	uint16_t len;
	char id[];
};

struct broker {
	/* The current config snapshot; shards switch on XK_RELOAD. */
	struct kite_config *cfg;
	struct security *sec;
	_Atomic unsigned reload_acks;
	/* Counted at each SIGHUP, and done once its reload is in every shard
	 * or failed: between the two, a shard that has not switched yet
	 * holds queued messages back (session_pump), since the new ACL may
	 * revoke them. */
	_Atomic uint32_t reload_started, reload_done;
	/* The process's heap in use, measured by shard 0 each tick while
	 * memory_limit is set. */
	_Atomic uint64_t heap_bytes;
	unsigned nshards;
	/* What the config asked for: nshards, or more when the kernel gave
	 * fewer rings (broker_ring_memory_short); a reload compares to it. */
	unsigned nshards_asked;
	struct shard *shards;
	struct xring *xrings; /* [(nshards + 1) * nshards]: src row, dst col */
	struct gtrie *gtrie;
	struct retain_store *retained;
	/* Per configured bridge: the session key recovery found for its
	 * local side (0: none), for bridge_start to adopt. */
	uint64_t *bridge_recovered;
	_Atomic uint32_t listener_conns[KITE_LISTENERS_MAX];
	/* Held for the broker's life: no other kite takes these addresses
	 * (broker.c, listener_lock). -1: none. */
	int listen_lock_fds[KITE_LISTENERS_MAX];
	uint64_t start_s;
	/* Client-id registry: written at CONNECT and disconnect only. */
	pthread_mutex_t reg_lock;
	struct htab reg; /* client id -> struct client_entry */
	/* Control ring for the main thread's MSG_RING wakeups. */
	struct io_uring ctl_ring;
	bool ctl_ring_up;
	pthread_mutex_t ctl_lock;
	_Atomic bool stop;
	pthread_barrier_t started; /* shards and main, once rings are enabled */
	struct flood_filter *flood; /* XDP filter, NULL when not loaded */
	bool ktls; /* the kernel takes TLS keys (probed at startup) */
	bool ktls_rekey; /* ... and replaces TLS 1.3 keys (KeyUpdate) */
	_Atomic uint64_t next_session_id;
	struct cluster *cluster; /* NULL: no cluster_nats_url */
};

#endif
