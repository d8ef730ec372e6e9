/* Types of the connection layer (io/conn.c, io/ktls.c, io/wsconn.c,
 * io/proxyconn.c): a client's transport, wire queue and MQTT framing
 * state. */
#ifndef KITE_IO_CONN_T_H
#define KITE_IO_CONN_T_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/ratecap.h"

#ifndef SOL_TLS
#define SOL_TLS 282 /* linux/socket.h; older libc headers lack it */
#endif

/* ---- limits -------------------------------------------------------------- */

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
 * SEND_CTX_SMALL_IOV iovecs: a lone packet, TLS records; or, in their
 * iovec space, a copy of up to 240 bytes: acks, a CONNACK), full-size ones
 * (a backlog as iovecs) and copy ones (a turn's packets gathered into
 * bytes of their own: up to SEND_COPY_SMALL_BYTES, what a turn usually
 * brings, or SEND_COPY_BYTES); beyond these counts a finished context is
 * freed, so the pools hold at most about 3 MiB per shard. */
#define SEND_CTX_SMALL_IOV 16
#define SEND_COPY_SMALL_BYTES 2048
#define SEND_COPY_BYTES (16u << 10)
#define SEND_CTX_POOL_SMALL 1024
#define SEND_CTX_POOL_LARGE 32
#define SEND_CTX_POOL_COPY_SMALL 1024
#define SEND_CTX_POOL_COPY 64
/* A fan-out's QoS 0 packets are gathered once per turn for all its
 * subscribers (conn.c, struct fan_cache) when a queue holds at most this
 * many. */
#define FAN_CACHE_MSGS 64
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

_Static_assert(SEND_IOV_MAX <= 1024, "UIO_MAXIOV");

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
/* docs/ENGINE.md quotes it ("Messages and the wire"): one per packet
 * queued, so its size is the wire queue's cost per message. */
_Static_assert(sizeof(struct out_entry) == 72, "update docs/ENGINE.md");

struct send_ctx; /* one in-flight gathered send (conn.c) */

struct held_ack;
struct mqtt_fixed_header;
struct msg;
struct pending_connect;
struct session;
struct shard;
struct tls_conn;
struct tls_ktls_rekey;
struct ws_conn;
struct bridge;

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

enum conn_park {
	PARK_RELOAD = 1,   /* a SIGHUP's reload is coming */
	PARK_TAKEOVER = 2, /* the old connection's shard has not kicked it */
	PARK_CLUSTER = 4,  /* its session's messages come from another node
			      (cluster.c): CONNACK waits */
	PARK_BARRIER = 8,  /* a SUBSCRIBE waits for the other shards to serve
			      what reached them first (shard_barrier_wait) */
};

enum conn_input_charge {
	INPUT_UNCHARGED, /* none, or bytes moving with a hand-off */
	INPUT_PRELOGIN,	 /* shard->input_prelogin */
	INPUT_ACTIVE,	 /* shard->input_active */
};

/* The whole connection fits jemalloc's 256-byte size class (an idle
 * connection's cost, issue 15: the next class is 320). The fields a
 * delivery and a flush touch come first; what only TLS, proxies, bridges,
 * the login or the close read comes last. */
struct conn {
	struct shard *shard;
	struct session *session;
	int fd;
	uint32_t id, gen;
	uint8_t state;
	uint8_t flags;
	uint8_t version;
	uint8_t listener;
	/* Wire queue: ring of entries in send order. */
	struct out_entry *outq;
	uint32_t out_head, out_count, out_cap;
	uint32_t head_off; /* bytes of outq[out_head] already sent */
	struct send_ctx *send;
	uint64_t out_bytes;
	/* Nothing is sent before the shard's log is durable up to here (a
	 * QoS 2 PUBLISH to a persistent session: persist_gate). */
	uint64_t gate_lsn;
	struct conn *dirty_next;
	struct conn_v5 *v5;
	/* Userspace TLS (OpenSSL over memory buffers); NULL on plain TCP
	 * and once kernel TLS took over (ktls == KTLS_ON). */
	struct tls_conn *tls;
	/* WebSockets listeners: the layer between the transport (plain,
	 * TLS or kernel TLS) and MQTT framing; NULL otherwise. */
	struct ws_conn *ws;
	/* A packet split across receives, or what a parked connection
	 * sent (parked), is buffered here. */
	uint8_t *in_buf;
	uint32_t in_len, in_cap;
	/* Shard clock (now_ms) when it last sent anything, low 32 bits:
	 * compared by conn_ms_since, which holds for 49 days, and a client
	 * silent for 1.5 times its keepalive (27 hours at most) is closed
	 * long before. */
	uint32_t last_rx_ms;
	uint16_t keepalive_s;
	uint8_t ktls;	    /* enum conn_ktls */
	uint8_t ktls_tries;
	uint8_t tls_flags;  /* enum conn_tls_flag */
	/* Which budget in_cap is charged to (enum conn_input_charge). */
	uint8_t in_charge;
	/* Not read while the shard's queues to other shards drain: a
	 * publisher slows down instead of growing them (shard_post). */
	bool in_paused;
	/* Why its input waits (enum conn_park): what came after the packet
	 * that parked it stays in in_buf, and nothing more is read, until
	 * every reason is gone (shard_park_input). */
	uint8_t parked;
	/* Its SUBSCRIBE waited for a barrier round that has completed: the
	 * next SUBSCRIBE runs without waiting again. */
	bool barrier_passed;
	/* Unparked and its receive armed again: what the client sent while
	 * it was parked may still be in the socket (shard_run_takeovers). */
	bool recv_fresh;
	/* Ticks an empty wire queue is kept after a PUBLISH went through it
	 * (shard_check_timeouts): a subscriber getting a message every
	 * second or so reuses it instead of a malloc and free per delivery. */
	uint8_t outq_keep;
	/* The wire queue was made for the CONNACK: it is given back as soon
	 * as that is sent (conn_on_send_done), so that a burst of logins
	 * does not hold one queue per client until the next tick. */
	bool outq_once;
	/* The client is a Mosquitto bridge (3.x level | 0x80): its
	 * subscriptions are no-local and retain-as-published. */
	bool peer_bridge;
	/* enable_proxy_protocol: the header version still awaited (0 once
	 * read); a header split across receives waits in rare->proxy_buf. */
	uint8_t proxy_await;
	/* The peer; an IPv4 peer is kept as a v4-mapped address (28 bytes,
	 * not the 128 of sockaddr_storage: this is per connection). */
	struct sockaddr_in6 peer;
	/* Accepted at (shard clock, low 32 bits, as last_rx_ms): the
	 * PROXY header and CONNECT deadlines. */
	uint32_t created_ms;
	struct will *will;
	char *username;
	/* The CONNECT being completed when the conn moves between shards. */
	struct pending_connect *pending;
	struct conn_rare *rare; /* NULL until needed (conn_rare) */
	/* A bridge's outgoing connection to a remote broker. */
	struct bridge *bridge;
};
/* One per client: a field more that crosses 224 bytes costs every idle
 * connection 32 bytes (jemalloc's classes go 224, 256, 320; bench rows
 * idle-*). Rarely used state goes to struct conn_rare instead. */
_Static_assert(sizeof(struct conn) <= 224, "struct conn outgrew 224 bytes");

/* What few connections need, allocated on first use (conn_rare) and
 * kept until the connection is freed. */
struct conn_rare {
	/* enable_proxy_protocol: a PROXY header split across receives
	 * (PROXY_HEADER_MAX bytes, allocated only then), proxy_len of it
	 * read. */
	uint8_t *proxy_buf;
	uint16_t proxy_len;
	/* When the client's last kernel TLS key updates came (ktls.c caps
	 * them: each costs kite far more than the client). */
	struct ratecap key_updates;
	/* SUBACK/UNSUBACKs held until the home shards of the shared
	 * subscriptions they name confirmed (share.c), in packet order. */
	struct held_ack *held_acks;
	/* Kernel TLS 1.3 where the kernel can re-key: the traffic secrets
	 * that follow the client's KeyUpdates; NULL otherwise. */
	struct tls_ktls_rekey *ktls_rekey;
};

/* Milliseconds from `then` (a conn's last_rx_ms or created_ms) to now_ms,
 * right while they are less than 49 days apart. */
static inline uint32_t conn_ms_since(uint64_t now_ms, uint32_t then)
{
	return (uint32_t)now_ms - then;
}

/* A packet handler (io/handle.h), dispatched by type from conn.c. It gets
 * the fixed header and the body; returns 0, or -1 when it closed c. */
typedef int (*packet_handler)(struct conn *c,
			      const struct mqtt_fixed_header *h,
			      const uint8_t *body, size_t len);

#endif
