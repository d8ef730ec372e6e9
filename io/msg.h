/* A published message: one immutable, reference-counted buffer shared by
 * every subscriber's send queue, every shard it crosses to, the retained
 * store and offline session queues. Freed when the last reference goes.
 *
 * Layout of buf: [5 bytes of header room][topic length, 2 bytes][topic]
 * [payload]. The MQTT 3.1.1 QoS 0 PUBLISH with the retain flag clear (the
 * form of every live fan-out delivery at QoS 0) is prebuilt right-aligned
 * into the header room, so such a delivery is a single iovec; every other
 * form is sent as a small per-delivery header plus the shared topic and
 * payload pieces. */
#ifndef KITE_MSG_H
#define KITE_MSG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define MSG_HEADER_ROOM 5

struct msg {
	_Atomic uint32_t refs;
	uint8_t qos;	 /* as published */
	bool retain;	 /* as published */
	uint8_t q0_off;	 /* start of the prebuilt QoS 0 packet in buf */
	uint16_t topic_len;
	uint32_t payload_len;
	/* MQTT 5 properties passed through to 5.0 subscribers untouched
	 * (payload format, content type, response topic, correlation data,
	 * user properties) in the client's order, without the length prefix.
	 * They follow the payload in buf. */
	uint32_t props_len;
	uint32_t expiry_s;   /* message expiry interval; 0 = none */
	uint64_t created_ms; /* monotonic, for the expiry */
	uint64_t origin;     /* publishing session's id (no local); 0 = broker */
	/* Keyed hash of the topic (hash_bytes), checked before a topic is
	 * compared with a client's server-to-client aliases. Keyed so that no
	 * publisher can craft 32 long topics that all pass the check and
	 * cost a full compare each per delivery; it is also faster than the
	 * byte-at-a-time FNV-1a it replaced on topics past ~10 bytes. */
	uint32_t topic_hash;
	/* Its id in the persistence logs, set by the first shard that logs
	 * it (persist_msg_id); 0 until then. */
	_Atomic uint64_t log_id;
	/* An incoming QoS 2 message routed at PUBREL whose release is not
	 * durable yet (persistence): QoS 2 deliveries of it wait, so that a
	 * restart cannot deliver it twice (docs/PERSISTENCE.md). */
	_Atomic bool q2_held;
	/* Who published it, for check_retain_source: set on retained
	 * messages from clients, else NULL. Freed with the message. */
	struct msg_source *source;
	uint8_t buf[];
};

struct msg_source {
	uint8_t listener;
	char *username; /* NULL: none */
	char client_id[];
};

/* A source with a copy of client_id and username (NULL: none), or NULL
 * when out of memory. Freed with the message it is attached to. */
struct msg_source *msg_source_new(uint8_t listener, const char *client_id,
				  size_t id_len, const char *username,
				  size_t username_len);

/* Copies topic, payload and the pass-through property bytes (may be NULL)
 * into a new message with one reference. NULL when out of memory. */
struct msg *msg_new(const uint8_t *topic, uint16_t topic_len,
		    const uint8_t *payload, uint32_t payload_len, uint8_t qos,
		    bool retain, const uint8_t *props, uint32_t props_len);

/* Seconds left before the message expires (0: expired), or UINT32_MAX
 * when it has no expiry. */
uint32_t msg_expiry_left(const struct msg *m, uint64_t now_ms);

/* References to one message taken in advance by one atomic add, for a
 * fan-out that takes one per subscriber: a locked add per delivery also
 * waits for the stores before it (the wire entry just written). Per
 * thread; msg_bank_open(m, n) needs a reference of the caller's to m,
 * msg_bank_close gives back what was not taken. */
struct msg_ref_bank {
	struct msg *m;
	uint32_t n;
};
extern _Thread_local struct msg_ref_bank msg_bank;
void msg_bank_open(struct msg *m, uint32_t n);
void msg_bank_close(void);

static inline struct msg *msg_ref(struct msg *m)
{
	if (m == msg_bank.m && msg_bank.n) {
		msg_bank.n--;
		return m;
	}
	atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
	return m;
}

void msg_unref(struct msg *m);
/* n references at once (n > 0). */
void msg_unref_n(struct msg *m, uint32_t n);
/* Same, typed for callbacks that hold messages as void * (retain store). */
void msg_release_cb(void *m);

static inline const char *msg_topic(const struct msg *m)
{
	return (const char *)m->buf + MSG_HEADER_ROOM + 2;
}

static inline const uint8_t *msg_payload(const struct msg *m)
{
	return m->buf + MSG_HEADER_ROOM + 2 + m->topic_len;
}

/* The prebuilt 3.1.1 QoS 0 packet, retain flag clear. */
static inline struct iovec msg_q0_packet(const struct msg *m)
{
	return (struct iovec){
		.iov_base = (void *)(m->buf + m->q0_off),
		.iov_len = (size_t)(MSG_HEADER_ROOM - m->q0_off) + 2 +
			   m->topic_len + m->payload_len,
	};
}

/* Topic with its 2-byte length prefix, as it goes on the wire. */
static inline struct iovec msg_topic_wire(const struct msg *m)
{
	return (struct iovec){
		.iov_base = (void *)(m->buf + MSG_HEADER_ROOM),
		.iov_len = 2u + m->topic_len,
	};
}

static inline struct iovec msg_props_wire(const struct msg *m)
{
	return (struct iovec){
		.iov_base = (void *)(msg_payload(m) + m->payload_len),
		.iov_len = m->props_len,
	};
}

static inline struct iovec msg_payload_wire(const struct msg *m)
{
	return (struct iovec){
		.iov_base = (void *)msg_payload(m),
		.iov_len = m->payload_len,
	};
}

struct mqtt_props;
/* The properties a broker passes through to MQTT 5 subscribers (payload
 * format, content type, response topic, correlation data, user properties)
 * in the order the client sent them, as Mosquitto does, without the
 * length prefix: malloc'd, or NULL
 * with *len 0 when there are none. */
uint8_t *msg_passthrough_props(const struct mqtt_props *in, uint32_t *len);

/* Live messages, for $SYS and leak checks. */
uint64_t msg_live_count(void);

#endif
