/* The broker engine: shards, connections, sessions, routing.
 *
 * This header is the io/ module's internal interface, shared by its files
 * (one per concern and one per MQTT packet type); io/main.c uses only the
 * broker_* entry points at the bottom.
 *
 * Ownership: a shard is one thread with its own io_uring. It owns its
 * connections, the sessions homed on it, its local subscription trie and
 * its memory. Shards share only what DESIGN.md lists: the global trie, the
 * retained store, the client-id registry and the config, and they talk
 * through single-producer rings woken by IORING_OP_MSG_RING. */
#ifndef KITE_ENGINE_H
#define KITE_ENGINE_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "acl/acl.h"
#include "core/codec.h"
#include "tls/tls.h"
#include "core/config.h"
#include "core/gtrie.h"
#include "core/htab.h"
#include "core/log.h"
#include "core/retain.h"
#include "core/trie.h"
#include "io/bridge.h"
#include "io/cluster.h"
#include "io/msg.h"
#include "io/persist.h"
#include "ws/ws.h"

#ifndef SOL_TLS
#define SOL_TLS 282 /* linux/socket.h; older libc headers lack it */
#endif

/* ---- limits -------------------------------------------------------------- */

/* Provided receive buffers per shard: what a multishot recv fills. An idle
 * connection holds none of them. */
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
/* iovecs in one gathered send; UIO_MAXIOV is 1024. */
#define SEND_IOV_MAX 512
/* A stalled subscriber must not eat the broker's memory: QoS 0 to a
 * connection is dropped while its wire queue holds max_queued_messages
 * packets beyond the inflight window, or max_queued_bytes (Mosquitto's
 * options and defaults); and, whatever those say, this many bytes. */
#define CONN_OUTQ_BYTES_MAX (64u << 20)
/* How long (in ticks) a subscriber's empty wire queue is kept. */
#define CONN_OUTQ_KEEP_TICKS 8
/* Send contexts each shard keeps for reuse (conn.c): small ones (up to
 * SEND_CTX_SMALL_IOV iovecs: a turn's one or two packets) and full-size
 * ones; beyond these counts a finished context is freed. */
#define SEND_CTX_SMALL_IOV 16
#define SEND_CTX_POOL_SMALL 1024
#define SEND_CTX_POOL_LARGE 32
/* A connection that has not completed CONNECT by then is closed. */
#define CONN_CONNECT_TIMEOUT_MS 10000
/* On an enable_proxy_protocol listener, a connection whose PROXY header
 * is not complete by then is closed: a proxy sends it at once. */
#define CONN_PROXY_TIMEOUT_MS 5000
/* The largest CONNECT kite reads: a peer that has not logged in can make
 * kite hold no more input than this. Client id, will topic and payload,
 * username and password are each up to 64 KiB in the protocol, but real
 * CONNECTs are a few hundred bytes; a larger one is refused unread. */
#define CONN_CONNECT_BYTES_MAX (64u << 10)
/* All partial packets of a shard's connections that have not completed
 * CONNECT, together: a flood of large CONNECTs costs at most this. */
#define SHARD_PRELOGIN_INPUT_MAX (16u << 20)
/* All partial packets of a shard's logged-in connections, together. One
 * packet may still be as large as max_packet_size allows, up to this. */
#define SHARD_INPUT_MAX (512u << 20)
#define SHARD_TICK_MS 250
/* Gathering (shard.c, shard_wait): while work keeps coming (the last
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
/* Concurrent scrapes per listener; each holds at most a request and one
 * answer. */
#define METRICS_SCRAPES_MAX 8
/* Slots per shard: the scrapes allowed, and as many again to say 503. */
#define METRICS_SCRAPE_SLOTS (2 * METRICS_SCRAPES_MAX)
/* Slots of a shard's io_uring file table, where clients are accepted
 * only to be closed at once when the process is out of descriptors: a
 * burst beyond it waits for the closes already queued, then goes on. */
#define SHARD_REFUSE_SLOTS 32
/* Clients accepted from one listener before the shard's other work
 * gets a turn. */
#define SHARD_ACCEPT_BATCH 256
/* Largest client id kite stores (the spec allows 65535). */
#define CLIENT_ID_MAX 65535

_Static_assert(SEND_IOV_MAX <= 1024, "UIO_MAXIOV");
_Static_assert(KITE_SHARDS_MAX <= 64, "shard masks are 64-bit");
_Static_assert((XRING_SLOTS & (XRING_SLOTS - 1)) == 0, "power of two");
_Static_assert((SHARD_RECV_BUFS & (SHARD_RECV_BUFS - 1)) == 0,
	       "buffer ring size must be a power of two");

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

/* ---- outgoing bytes ------------------------------------------------------ */

enum out_kind {
	OUT_CTRL,      /* bytes in inl[] or data */
	OUT_PUB_Q0V3,  /* the message's prebuilt 3.1.1 QoS 0 packet */
	OUT_PUB,       /* inl[0..hlen) + topic + inl[hlen..hlen+mid) + payload */
	OUT_PUB5,      /* same, with the message's MQTT 5 properties before
			  the payload */
	OUT_PUB5_ALIASED, /* OUT_PUB5 with an empty topic: a topic alias the
			     client already knows replaces it */
};

/* Server-to-client topic aliases kept per MQTT 5 connection: the first
 * topics sent to it, never evicted (a bound, not a cache). */
#define CONN_OUT_ALIASES_MAX 32

/* Subscription identifiers carried by one delivery (overlapping
 * subscriptions of one session merge into one delivery). */
#define DELIV_SUBIDS_MAX 4

struct out_entry {
	struct msg *msg;
	uint8_t *data; /* heap control packet, else NULL */
	uint32_t len;  /* bytes on the wire */
	uint8_t kind;
	uint8_t hlen;
	uint8_t mid;
	/* mount_point: topic bytes not sent; the shortened topic's length
	 * prefix follows mid in inl. */
	uint8_t tskip;
	/* Header, then packet id, property length and the per-delivery
	 * properties (expiry, subscription ids). */
	uint8_t inl[45];
};

/* How one message goes to one session. */
struct deliv {
	uint8_t qos;
	bool retain;
	uint8_t nsub;
	uint32_t sub[DELIV_SUBIDS_MAX];
};

/* Subscription options as kept in trie_sub.options. */
enum sub_opt {
	SUB_QOS_MASK = 0x03,
	SUB_NO_LOCAL = 0x04,
	SUB_RETAIN_AS_PUBLISHED = 0x08,
	SUB_RH_SHIFT = 4, /* retain handling, 2 bits */
	SUB_SHARED = TRIE_SUB_GROUP, /* owner is a shared-subscription group (share.c) */
	/* In the trie only: the owner's identity may read every topic the
	 * filter matches (decided at SUBSCRIBE, again at reload and when the
	 * identity changes), so fan-out skips its ACL check. */
	SUB_READ_OK = 0x80,
};

struct send_ctx; /* one in-flight gathered send (conn.c) */

/* ---- sessions ------------------------------------------------------------ */

enum inflight_state {
	INFLIGHT_WAIT_PUBACK,
	INFLIGHT_WAIT_PUBREC,
	INFLIGHT_WAIT_PUBCOMP,
	INFLIGHT_DONE, /* acked out of order: a hole until the head passes */
};

struct inflight {
	struct msg *msg; /* NULL once PUBREC arrived (only PUBREL left) */
	uint64_t msg_id; /* as logged (persistent sessions), else 0 */
	uint16_t pid;
	uint8_t state;
	struct deliv d;
	uint32_t bytes; /* payload, counted in inflight_bytes */
};

struct queued {
	struct msg *msg;
	struct deliv d;
};

/* An incoming QoS 2 message held until its PUBREL (spec 4.3.3 method A,
 * as Mosquitto does: subscribers see it once the publisher released it). */
struct qos2_in {
	struct msg *msg;
	uint16_t pid;
};

struct sub_entry {
	struct sub_entry *next;
	uint8_t qos;
	uint8_t options; /* enum sub_opt bits as subscribed */
	uint16_t len;
	uint32_t sub_id;
	char filter[];
};

struct conn;
struct shard;
struct held_ack;

struct will;

struct session {
	struct shard *shard;
	struct conn *conn; /* NULL while offline */
	struct session *prev, *next; /* the shard's sessions */
	struct htab_link id_link;    /* the shard's by-id table */
	uint64_t id;	  /* unique in this broker's life: no local, shares */
	char *client_id;
	uint16_t client_id_len;
	bool persistent;  /* expiry_s != 0: outlives its connection */
	/* Session expiry interval (MQTT 5); 3.1.1: 0 for a clean session,
	 * UINT32_MAX (never) otherwise. */
	uint32_t expiry_s;
	uint64_t expire_at_ms; /* offline deadline; 0 = none */
	struct will *delayed_will; /* MQTT 5 will delay pending */
	uint64_t will_at_ms;
	bool zombie;	  /* taken over by another shard; freed on its kick */
	bool pump_deferred; /* its queue waits for a reload (session_pump) */
	uint16_t next_pid;
	struct sub_entry *subs;
	uint32_t sub_count;
	/* The inflight window: a ring in send order (a resumed session
	 * resends in that order), positions if_head..if_tail (free-running;
	 * slot = position & (inflight_cap - 1)); an entry acked out of order
	 * stays as an INFLIGHT_DONE hole until the head passes it.
	 * inflight_count counts the live entries. if_index finds a packet
	 * id's slot (open addressing, 2 x inflight_cap cells of slot + 1,
	 * 0 empty), so an ack costs no scan whatever the window. */
	struct inflight *inflight;
	uint32_t inflight_count, inflight_cap;
	uint32_t if_head, if_tail;
	uint32_t *if_index;
	uint64_t inflight_bytes; /* payload bytes in flight (max_inflight_bytes) */
	struct queued *queue;	/* ring */
	uint32_t q_head, q_count, q_cap;
	uint64_t q_bytes;	/* payload bytes queued (max_queued_bytes) */
	struct qos2_in *qos2_in; /* QoS 2 received, awaiting PUBREL */
	uint32_t qos2_in_count, qos2_in_cap;
	/* Access control: the identity that connected last and its
	 * compiled rules under the security snapshot acl_gen. */
	char *username;
	uint8_t listener;
	uint32_t acl_gen;
	struct acl_identity *acl;
	/* Fan-out merge of overlapping subscriptions: one delivery per
	 * session per message, at the highest granted QoS. */
	uint32_t match_gen;
	uint32_t match_slot;
	/* Lost its connection during this event; ended (or kept offline)
	 * by conn_settle once nothing walks the shard's sessions. */
	bool ending;
	struct session *ending_next;
	bool logged; /* its SESSION record is in the shard's log */
	uint8_t protocol; /* of its last connection (logged with it) */
	uint64_t offline_wall_ms; /* logged: offline since (0: online) */
	bool q2_waiting; /* in shard->q2_waiters */
	struct bridge *bridge; /* the local side of a bridge (bridge.c) */
	/* A bridge's local session, from its start or from the logs before
	 * its bridge adopts it: logged under a client id no client can
	 * have (persist.c), never in the client-id registry. */
	bool of_bridge;
	/* Cluster: when its connection was accepted (wall clock, µs): a
	 * takeover announced by another node for an older connection than
	 * this one is ignored. */
	uint64_t connect_wall_us;
};

/* The interface a persistence backend would implement later: every change
 * to durable session state goes through these, in this order. Today the
 * store is memory only (session.c). */
struct session *session_create(struct shard *s, const uint8_t *id,
			       uint16_t len, uint32_t expiry_s);
void session_destroy(struct session *ss);
/* Recovery: a session that existed before the restart, under its key. */
struct session *session_revive(struct shard *s, uint64_t key, const char *id,
			       uint16_t len, uint32_t expiry_s);
/* Recovery: a message that was queued (pid 0) or in flight (state: enum
 * inflight_state; m may be NULL waiting for PUBCOMP). 0, or -1. */
int session_restore_msg(struct session *ss, struct msg *m, uint64_t msg_id,
			const struct deliv *d, uint16_t pid, uint8_t state);
/* options: enum sub_opt bits; returns 1 if the filter was new for this
 * session, 0 if it replaced an existing subscription, -1 on failure. */
int session_add_sub(struct session *ss, const char *filter, uint16_t len,
		    uint32_t options, uint32_t sub_id, struct held_ack *held);
int session_remove_sub(struct session *ss, const char *filter, uint16_t len,
		       struct held_ack *held);
/* Delivers msg to the session as d says (qos already min(pub, granted)):
 * onto the wire, into the inflight window, or into the offline/overflow
 * queue. */
void session_deliver(struct session *ss, struct msg *m, const struct deliv *d);
/* The same, without a bridge's topic mapping (bridge.c maps first). */
void session_deliver_as_is(struct session *ss, struct msg *m,
			   const struct deliv *d);
/* Publishes a pending delayed will now (session end or its time). */
void session_fire_will(struct session *ss);
/* Drops a pending delayed will: the client is back in time. */
void session_cancel_will(struct session *ss);
/* Offline sessions whose expiry passed end; delayed wills fire. */
void session_check_timers(struct shard *s);
/* Makes sure the tick looks at sessions again by `at_ms`. */
void session_timer_at(struct shard *s, uint64_t at_ms);
/* What an acknowledgement from the client matched. */
enum ack_result {
	ACK_DONE,    /* the packet id's flow moved on */
	ACK_UNKNOWN, /* no such packet id outstanding */
	ACK_WRONG,   /* outstanding, but for another QoS or step: a protocol
			error (Mosquitto closes the connection) */
};
enum ack_result session_on_puback(struct session *ss, uint16_t pid);
/* A reason code >= 0x80 (MQTT 5) ends the QoS 2 flow there: no PUBREL. */
enum ack_result session_on_pubrec(struct session *ss, uint16_t pid,
				  uint8_t reason);
enum ack_result session_on_pubcomp(struct session *ss, uint16_t pid);
/* A packet id not in flight (bridges number SUBSCRIBEs from the same
 * sequence, as Mosquitto does). */
uint16_t session_next_pid(struct session *ss);
/* The inflight window in send order, holes included (state
 * INFLIGHT_DONE): for (i = ss->if_head; i != ss->if_tail; i++). */
static inline struct inflight *session_inflight_at(const struct session *ss,
						   uint32_t pos)
{
	return &ss->inflight[pos & (ss->inflight_cap - 1)];
}
/* Reconnect: resend the inflight window with DUP, then queued messages. */
void session_resume(struct session *ss);
/* Moves queued messages into the inflight window while it has room. */
void session_pump(struct session *ss);
/* Pumps the queues that waited for a reload, once none is pending. */
void session_pump_deferred(struct shard *s);
/* Incoming QoS 2: held until PUBREL. _release returns the message (the
 * caller gets the reference) or NULL for an unknown id. */
bool session_qos2_seen(struct session *ss, uint16_t pid);
int session_qos2_add(struct session *ss, uint16_t pid, struct msg *m);
struct msg *session_qos2_release(struct session *ss, uint16_t pid);

/* ---- connections ------------------------------------------------------- */

enum conn_state {
	CONN_AWAIT_CONNECT,
	CONN_ACTIVE,
	CONN_HANDOFF,  /* being moved to the shard that owns its session */
	CONN_CLOSING,
};

enum conn_flag {
	CONN_RECV_ARMED = 1 << 0,
	CONN_SEND_BUSY = 1 << 1,
	CONN_CLOSE_AFTER_FLUSH = 1 << 2,
	CONN_DIRTY = 1 << 3,
	CONN_SHUTDOWN_SENT = 1 << 4,
	CONN_COUNTED = 1 << 5, /* counted in clients connected */
	/* The SHUTDOWN request is not back yet: the fd must stay open, or
	 * its number could be reused and the late shutdown hit a stranger. */
	CONN_SHUTDOWN_BUSY = 1 << 6,
	/* QoS 0 to it is being dropped (said once in the log, until its
	 * wire queue drained). */
	CONN_DROPPING = 1 << 7,
};

struct will {
	struct will *next; /* shard->wills_due */
	struct msg *msg;
	uint8_t qos;
	bool retain;
	uint32_t delay_s; /* MQTT 5 will delay interval */
};

enum conn_ktls {
	KTLS_UNDECIDED, /* userspace TLS (or plain) so far */
	KTLS_STOPPING,	/* recv cancelled, waiting to install the keys */
	KTLS_ON,	/* the kernel encrypts and decrypts */
	KTLS_OFF,	/* userspace for good */
};

/* TLS records other than application data that kite owes the client.
 * conn_flush sends them in this order; close_notify goes after the last
 * MQTT bytes (userspace TLS too, the others only arise on kernel TLS). */
enum conn_tls_flag {
	CONN_TLS13 = 1 << 0, /* kernel TLS: the version, once OpenSSL is gone */
	CONN_TLS_OWE_NO_RENEGOTIATION = 1 << 1, /* warning alert 100 */
	CONN_TLS_OWE_KEY_UPDATE = 1 << 2,	/* ours, after the client's */
	CONN_TLS_OWE_CLOSE_NOTIFY = 1 << 3,
	CONN_TLS_OWED = CONN_TLS_OWE_NO_RENEGOTIATION |
			CONN_TLS_OWE_KEY_UPDATE | CONN_TLS_OWE_CLOSE_NOTIFY,
};

/* MQTT 5 state of a connection, allocated only for 5.0 clients. */
struct conn_v5 {
	uint32_t max_packet;   /* the client's maximum packet size */
	uint16_t receive_max;  /* the client's receive maximum */
	uint16_t alias_cap;    /* inbound topic aliases (max_topic_alias) */
	struct alias {
		char *topic;
		uint16_t len;
	} *aliases;            /* inbound, index = alias - 1 */
	uint16_t out_alias_max;   /* the client's topic alias maximum, capped */
	uint16_t out_alias_used;
	struct out_alias {
		uint32_t hash;
		uint16_t len;
		char *topic;
	} *out_aliases;        /* outbound, index = alias - 1 */
};

enum conn_input_charge {
	INPUT_UNCHARGED, /* none, or bytes moving with a hand-off */
	INPUT_PRELOGIN,	 /* shard->input_prelogin */
	INPUT_ACTIVE,	 /* shard->input_active */
};

struct conn {
	struct shard *shard;
	struct session *session;
	struct will *will;
	int fd;
	uint32_t id, gen;
	uint8_t state;
	uint8_t flags;
	uint8_t version;
	uint8_t listener;
	uint16_t keepalive_s;
	uint8_t ktls;	    /* enum conn_ktls */
	uint8_t ktls_tries;
	uint8_t tls_flags;  /* enum conn_tls_flag */
	/* Kernel TLS key updates from the client in the current second
	 * (ktls.c caps them: each costs kite far more than the client). */
	uint8_t key_updates;
	uint16_t key_update_second;
	/* enable_proxy_protocol: the header version still awaited (0 once
	 * read); a header split across receives waits in proxy_buf
	 * (PROXY_HEADER_MAX bytes, allocated only then). */
	uint8_t proxy_await;
	uint16_t proxy_len;
	/* Which budget in_cap is charged to (enum conn_input_charge). */
	uint8_t in_charge;
	/* Not read while the shard's queues to other shards drain: a
	 * publisher slows down instead of growing them (shard_post). */
	bool in_paused;
	/* Why its input waits (enum conn_park): what came after the packet
	 * that parked it stays in in_buf, and nothing more is read, until
	 * every reason is gone (shard_park_input). */
	uint8_t parked;
	/* Unparked and its receive armed again: what the client sent while
	 * it was parked may still be in the socket (shard_run_takeovers). */
	bool recv_fresh;
	/* Ticks an empty wire queue is kept after a PUBLISH went through it
	 * (shard_check_timeouts): a subscriber getting a message every
	 * second or so reuses it instead of a malloc and free per delivery;
	 * a connection that only got its CONNACK gives it back at once. */
	uint8_t outq_keep;
	uint64_t last_rx_ms;
	uint64_t created_ms;
	/* A packet split across receives, or what a parked connection
	 * sent (parked), is buffered here. */
	uint8_t *in_buf;
	uint32_t in_len, in_cap;
	/* Wire queue: ring of entries in send order. */
	struct out_entry *outq;
	uint32_t out_head, out_count, out_cap;
	uint32_t head_off; /* bytes of outq[out_head] already sent */
	uint64_t out_bytes;
	/* Nothing is sent before the shard's log is durable up to here (a
	 * QoS 2 PUBLISH to a persistent session: persist_gate). */
	uint64_t gate_lsn;
	struct send_ctx *send;
	struct conn *dirty_next;
	uint8_t *proxy_buf;
	/* The peer; an IPv4 peer is kept as a v4-mapped address (28 bytes,
	 * not the 128 of sockaddr_storage: this is per connection). */
	struct sockaddr_in6 peer;
	char *username;
	/* The CONNECT being completed when the conn moves between shards. */
	struct pending_connect *pending;
	struct conn_v5 *v5;
	/* SUBACK/UNSUBACKs held until the home shards of the shared
	 * subscriptions they name confirmed (share.c), in packet order. */
	struct held_ack *held_acks;
	/* Userspace TLS (OpenSSL over memory buffers); NULL on plain TCP
	 * and once kernel TLS took over (ktls == KTLS_ON). */
	struct tls_conn *tls;
	/* Kernel TLS 1.3 where the kernel can re-key: the traffic secrets
	 * that follow the client's KeyUpdates; NULL otherwise. */
	struct tls_ktls_rekey *ktls_rekey;
	/* WebSockets listeners: the layer between the transport (plain,
	 * TLS or kernel TLS) and MQTT framing; NULL otherwise. */
	struct ws_conn *ws;
	/* A bridge's outgoing connection to a remote broker. */
	struct bridge *bridge;
	/* The client is a Mosquitto bridge (3.x level | 0x80): its
	 * subscriptions are no-local and retain-as-published. */
	bool peer_bridge;
};

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
};

struct xitem {
	uint8_t kind;
	void *ptr;
};

/* A client connected on shard `from` (connection id, gen) and took over
 * `old`, a session of the destination shard. */
struct takeover {
	struct takeover *next;
	struct session *old;
	uint32_t conn_id, conn_gen;
	uint8_t from;
};

enum conn_park {
	PARK_RELOAD = 1,   /* a SIGHUP's reload is coming */
	PARK_TAKEOVER = 2, /* the old connection's shard has not kicked it */
};

struct xring {
	_Atomic uint32_t head; /* consumer */
	char pad0[60];
	_Atomic uint32_t tail; /* producer */
	char pad1[60];
	struct xitem items[XRING_SLOTS];
};

struct xoverflow {
	struct xitem *items;
	uint32_t head, count, cap;
};

/* ---- shards --------------------------------------------------------------- */

/* Why a delivery was dropped (kite_messages_dropped_total{reason}). */
enum drop_reason {
	DROP_OFFLINE,	    /* QoS 0 to a session without a connection */
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

struct delivery {
	struct session *ss;
	struct deliv d;
};

struct broker;

/* Password and ACL files per listener (security.c); one snapshot per
 * config generation, shared read-only by all shards. */
struct security {
	uint32_t gen;
	unsigned count;
	struct acl_cache *acl[KITE_LISTENERS_MAX];
	struct passwd_db *pw[KITE_LISTENERS_MAX];
	struct tls_server *tls[KITE_LISTENERS_MAX]; /* NULL: plain TCP */
	bool acl_shared[KITE_LISTENERS_MAX]; /* owned by an earlier listener */
	bool pw_shared[KITE_LISTENERS_MAX];
};

struct security *security_load(const struct kite_config *cfg, char *err,
			       size_t errlen);
void security_free(struct security *sec);
const struct acl_identity *session_acl(struct session *ss);
/* check_retain_source: whether the publisher of a retained message may
 * still write its topic under the current ACL (Mosquitto's check at
 * retained delivery). True without a recorded source or ACL file. */
bool security_source_may_write(struct shard *s, const struct msg *m);
bool session_may(struct session *ss, const char *topic, size_t len,
		 enum acl_access access);
/* $SYS/... and $share/...: never published by a client. */
bool security_publish_reserved(const char *topic, size_t len);
bool session_may_subscribe(struct session *ss, const char *filter, size_t len);
/* Whether the session may read every topic the (unshared) filter
 * matches: SUB_READ_OK. */
bool session_may_read_all(struct session *ss, const char *filter, size_t len);
/* The SUB_READ_OK bits of the session's subscriptions, decided again
 * (its identity or the ACL changed). */
void session_recheck_reads(struct session *ss);
void session_set_identity(struct session *ss, unsigned listener,
			  const char *username);
/* Whether c's listener has a password file (only it can vouch for a
 * username). */
bool security_has_passwords(const struct conn *c);
enum passwd_result security_check_password(const struct conn *c,
					   const char *username,
					   const uint8_t *pw, size_t len);

/* What XK_RELOAD hands a shard. */
struct snapshot {
	struct kite_config *cfg;
	struct security *sec;
	uint32_t reload; /* the reload_started it answers */
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
	int listen_fds[KITE_LISTENERS_MAX];
	struct __kernel_timespec tick_ts;
	/* The kernel takes a minimum wait (IORING_FEAT_MIN_TIMEOUT, 6.12),
	 * and how long the last wait slept (ns). */
	bool min_wait_ok;
	uint64_t last_wait_ns;

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

	/* Finished send contexts for reuse: [0] small, [1] full-size. */
	struct send_ctx *ctx_pool[2];
	uint32_t ctx_pool_n[2];

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

	uint64_t now_ms;
	uint64_t last_sys_ms;
	/* Earliest session expiry or delayed will on this shard (0: none),
	 * so the tick scans sessions only when one is due. */
	uint64_t next_session_deadline_ms;
	bool stopping;
	/* XK_STOP seen: the shard stops after one more pass over what the
	 * kernel already received (shard_main). */
	bool stop_pending;
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

static inline bool persist_on(const struct shard *s)
{
	return s->log != NULL;
}

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
	pthread_mutex_t ctl_lock;
	_Atomic bool stop;
	pthread_barrier_t started; /* shards and main, once rings are enabled */
	struct flood_filter *flood; /* XDP filter, NULL when not loaded */
	bool ktls; /* the kernel takes TLS keys (probed at startup) */
	bool ktls_rekey; /* ... and replaces TLS 1.3 keys (KeyUpdate) */
	_Atomic uint64_t next_session_id;
	struct cluster *cluster; /* NULL: no cluster_nats_url */
};

/* shard.c */
uint64_t now_monotonic_ms(void);
struct xring *xring_of(struct broker *b, unsigned src, unsigned dst);
/* Hands an item to shard dst; wakes it at the end of this loop turn. */
void shard_post(struct shard *s, unsigned dst, struct xitem it);
/* From the main thread (src row nshards), serialised by ctl_lock. */
void broker_post_from_main(struct broker *b, unsigned dst, struct xitem it);
int shard_init(struct shard *s, struct broker *b, unsigned idx);
int shard_start(struct shard *s);
void shard_fini(struct shard *s);
/* After every shard finished: items still in rings or overflow queues
 * (posted to a shard that had already exited) give back what they hold. */
void shard_discard_pending(struct broker *b);
struct io_uring_sqe *shard_sqe(struct shard *s);
/* Arms c's multishot receive, unless its input is paused. */
void shard_arm_recv(struct shard *s, struct conn *c);
/* True while some queue to another shard is long: publishers wait. */
bool shard_backlogged(const struct shard *s);
/* Stops reading from c until the shard's backlog has drained. */
void shard_pause_input(struct shard *s, struct conn *c);
/* A reload this shard has not switched to yet; _coming: or a SIGHUP
 * the main thread has not taken yet (one syscall). */
bool shard_reload_pending(const struct shard *s);
bool shard_reload_coming(const struct shard *s);
/* Stops reading from c until `why` (enum conn_park) is over: for
 * PARK_RELOAD, this shard has applied the coming reload; for
 * PARK_TAKEOVER, XK_TAKEN came. Then the input c buffered runs. */
void shard_park_input(struct shard *s, struct conn *c, uint8_t why);
void shard_unpark_conn(struct shard *s, struct conn *c, uint8_t why);
/* A takeover of a session of this shard, run after this turn's
 * completions (XK_TAKEOVER, or a local one whose old connection is
 * parked and has not run what it sent). */
void shard_queue_takeover(struct shard *s, struct takeover *t);
int shard_conn_attach(struct shard *s, struct conn *c);
void shard_conn_detach(struct shard *s, struct conn *c);

/* conn.c */
/* Feeds received bytes (ciphertext on a TLS connection). */
void conn_on_data(struct conn *c, const uint8_t *data, size_t len);
/* Feeds MQTT bytes; decodes and dispatches every complete packet. */
void conn_on_plain(struct conn *c, const uint8_t *data, size_t len);
/* Hands over the connection's buffered input (and its charge): the
 * caller frees it. NULL when there is none. */
uint8_t *conn_take_input(struct conn *c, uint32_t *len);
void conn_queue_ctrl(struct conn *c, const uint8_t *bytes, size_t len);
/* An acknowledgement: after any that still wait (held), else at once. */
void conn_queue_ack(struct conn *c, const uint8_t *bytes, size_t len);
/* A PUBLISH to this client; qos/retain/dup as they go on the wire. */
/* False (and nothing queued) when the message cannot go to this client:
 * expired, larger than its maximum packet size, or the queue is full. */
/* mount_point of c's listener: points *b at "mount" + *b in a malloc'd
 * buffer returned in *owned (free it after use); no mount point leaves
 * both alone. -1 when out of memory or longer than a topic may be. */
int conn_mount(const struct conn *c, struct mqtt_bytes *b, char **owned);
bool conn_queue_publish(struct conn *c, struct msg *m, const struct deliv *d,
			bool dup, uint16_t pid);
void conn_mark_dirty(struct conn *c);
void conn_flush(struct conn *c);
/* Frees the shard's pooled send contexts (shard teardown). */
void conn_pools_free(struct shard *s);
void conn_on_send_done(struct conn *c, int res);
/* Closes: reason for the log; send_will decides the will message. */
void conn_close(struct conn *c, const char *reason, bool send_will);
void conn_close_after_flush(struct conn *c, const char *reason);
/* After every event (completion, cross-shard item, tick), with no fan-out
 * or session walk in progress: publishes the wills of the connections
 * closed during it and ends their sessions. */
void conn_settle(struct shard *s);
/* A session about to be freed leaves the ending list. */
void conn_forget_ending(struct session *ss);
void conn_on_closed(struct conn *c);
/* Shuts the socket down both ways; requests on it then complete. */
void conn_shutdown(struct conn *c);

/* wsconn.c: MQTT over WebSockets (ws/ws.h does the protocol). */
/* Gives a connection accepted on a WebSockets listener its layer. */
int wsconn_attach(struct conn *c, const struct kite_config *cfg,
		  const struct kite_listener_cfg *l);
/* Received bytes of a WebSocket connection, after any TLS. */
void wsconn_on_data(struct conn *c, const uint8_t *data, size_t len);

/* io/proxyconn.c: takes the PROXY header off the front of received bytes
 * (c->proxy_await set). True when bytes past the header are left in
 * *data, *len for the layers above; false when all were consumed or the
 * connection is closing. */
bool proxyconn_on_data(struct conn *c, const uint8_t **data, size_t *len);

/* ktls.c */
void conn_ktls_begin(struct conn *c);
void conn_ktls_try(struct conn *c);
void conn_ktls_control_record(struct conn *c);
/* conn_flush: submits the next owed control record; false if none is
 * due now. conn_on_send_done reports its completion. */
bool conn_ktls_send_control(struct conn *c);
void conn_send_record(struct conn *c, uint8_t record_type,
		      const uint8_t *bytes, size_t len);
void conn_ktls_control_sent(struct conn *c, uint8_t record_type, int res);
void conn_free(struct conn *c);
const char *conn_peer_str(const struct conn *c, char *buf, size_t len);
const char *conn_client_id(const struct conn *c);
/* The flood filter's view of the client: a strike for a source that
 * failed before or at CONNECT; an allow entry after a good CONNECT. */
void conn_strike(struct conn *c);
void conn_allow(struct conn *c);
/* The peer is blocked by the flood filter: asked for clients behind a
 * proxy, whose own packets the XDP program never sees. */
bool conn_blocked(struct conn *c);
/* Closes the connection for a protocol violation: logged with the peer and
 * reason; MQTT 5 clients first get DISCONNECT with the reason code. */
void conn_protocol_error(struct conn *c, uint8_t rc, const char *why);

/* Packet handlers (handle_*.c), dispatched by type from conn.c. Each gets
 * the fixed header and the body; returns 0, or -1 when it closed c. */
typedef int (*packet_handler)(struct conn *c,
			      const struct mqtt_fixed_header *h,
			      const uint8_t *body, size_t len);
int handle_connect(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len);
int handle_publish(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len);
int handle_ack(struct conn *c, const struct mqtt_fixed_header *h,
	       const uint8_t *body, size_t len);
int handle_subscribe(struct conn *c, const struct mqtt_fixed_header *h,
		     const uint8_t *body, size_t len);
int handle_unsubscribe(struct conn *c, const struct mqtt_fixed_header *h,
		       const uint8_t *body, size_t len);
int handle_pingreq(struct conn *c, const struct mqtt_fixed_header *h,
		   const uint8_t *body, size_t len);
int handle_disconnect(struct conn *c, const struct mqtt_fixed_header *h,
		      const uint8_t *body, size_t len);
/* handle_publish.c: routes m (its reference goes) and sends `ack` (PUBACK
 * or PUBCOMP; 0: none) for pid once what it acknowledges is durable. */
void publish_route(struct conn *c, struct msg *m, uint8_t ack, uint16_t pid);

/* handle_connect.c: finishing a CONNECT, possibly on another shard. */
/* On the session's shard: takes over a connection from another shard. */
void connect_adopt(struct shard *s, struct conn *c);
/* On the accepting shard: its recv has stopped, hand the conn over. */
void connect_handoff_ready(struct shard *s, struct conn *c);
void session_kick(struct shard *s, struct session *ss);
/* Session end on disconnect (clean sessions are dropped). */
void session_on_disconnect(struct shard *s, struct session *ss);
/* Recovery: the registry learns a revived session. 0, or -1. */
int session_register(struct broker *b, struct session *ss);
/* Cluster: the shard holding the session of client `id`, or -1. Any
 * thread. */
int session_home(struct broker *b, const char *id, uint16_t len);
/* Cluster: the client connected on another node; this node's session of
 * that id (on s) ends and its connection is closed (0x8E). */
void session_kick_remote(struct shard *s, const char *id, uint16_t len,
			 uint64_t at_wall_us);

/* route.c */
/* Routes a new message from this shard: retained store, global trie,
 * other shards, local fan-out. Takes over the caller's reference. Returns
 * false when no subscription anywhere matched (MQTT 5 reason 0x10). */
bool route_publish(struct shard *s, struct msg *m);
/* Local fan-out of a message that reached this shard; t (may be NULL)
 * travels with share forwards. */
void route_local(struct shard *s, struct msg *m, struct persist_ticket *t);
/* route_publish for a message whose acknowledgement waits for durability
 * (t from persist_ticket_begin, or NULL). */
bool route_publish_t(struct shard *s, struct msg *m, struct persist_ticket *t);
/* A message from another node of the cluster (one reference): routed on
 * this node only, to every shard with a match. */
void route_remote(struct shard *s, struct msg *m);
/* Retained messages matching filter, to one session (on subscribe). */
void route_retained(struct shard *s, struct session *ss, const char *filter,
		    uint16_t len, uint8_t granted_qos, uint32_t sub_id);

/* share.c: $share/GROUP/FILTER */
bool share_parse(const char *filter, uint16_t len, const char **key,
		 uint16_t *key_len);
unsigned share_home(const struct broker *b, const char *key, uint16_t len);
/* Join/leave a group; returns true when the group's home is another shard
 * and the change is in flight: pass `held` to have it counted down. */
struct held_ack;
bool share_subscribe(struct session *ss, const char *key, uint16_t len,
		     uint8_t qos, uint32_t sub_id, struct held_ack *held);
bool share_unsubscribe(struct session *ss, const char *key, uint16_t len,
		       struct held_ack *held);
/* A SUBACK/UNSUBACK that leaves only when every home shard it waits for
 * confirmed (conn.c). conn_hold_ack queues one (waiting for its caller);
 * held_ack_expect adds a confirmation to wait for; held_ack_set gives the
 * packet; conn_release_ack counts one confirmation down. */
struct held_ack *conn_hold_ack(struct conn *c, size_t cap);
void held_ack_expect(struct held_ack *h);
void held_ack_set(struct held_ack *h, const uint8_t *bytes, size_t len);
/* Retained messages for filter, to be looked up right after h's SUBACK
 * leaves; false when out of memory. */
bool held_ack_retained(struct held_ack *h, const char *filter, uint16_t len,
		       uint8_t granted_qos, uint32_t sub_id);
void conn_release_ack(struct conn *c, struct held_ack *h);
/* The ack of a SUBSCRIBE/UNSUBSCRIBE: through `held` if it waits, else
 * straight onto the wire. */
void conn_send_ack(struct conn *c, struct held_ack *held, const uint8_t *bytes,
		   size_t len);
struct conn *shard_conn_lookup(struct shard *s, uint32_t id, uint32_t gen);
void share_route(struct shard *s, void *group, struct msg *m,
		 struct persist_ticket *t);
void share_on_item(struct shard *s, uint8_t kind, void *op);
/* Cluster: NATS gave this node the message for group key (homed on s):
 * one member gets it. Takes over the reference. */
void share_route_remote(struct shard *s, const char *key, uint16_t len,
			struct msg *m);
void share_free_all(struct shard *s);
void share_op_discard(void *op);
struct session *shard_session_by_id(struct shard *s, uint64_t id);

/* sys.c */
void sys_publish(struct shard *s);
/* A drop of n deliveries on s, counted by reason and in the total. */
void stats_drop(struct shard *s, enum drop_reason why, uint64_t n);

/* metrics.c: the Prometheus listener (protocol metrics). */
struct scrape;
void metrics_on_accept(struct shard *s, unsigned li, int fd);
void metrics_on_cqe(struct shard *s, uint32_t id, uint32_t gen, int res);
/* Each tick: deadlines of slow scrapers. */
void metrics_tick(struct shard *s);
/* After the shard's ring is gone: what scrapes were left is freed. */
void metrics_fini(struct shard *s);

/* ---- entry points for main.c -------------------------------------------- */

int broker_start(struct broker *b);
/* Asks every shard to stop and joins them. */
void broker_stop(struct broker *b);
/* Applies a re-read config (the parts that can change at runtime). */
void broker_reload(struct broker *b, const struct kite_config *cfg,
		   struct security *sec);
const char *broker_version(void);

#endif
