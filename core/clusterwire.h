/* What kite nodes of a cluster put on NATS (docs/CLUSTER.md): MQTT topics
 * and filters as NATS subjects, and the envelope a message travels in.
 * Bytes in, bytes out: no NATS client here. */
#ifndef KITE_CLUSTERWIRE_H
#define KITE_CLUSTERWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest subject kite puts on NATS, prefix included. nats-server
 * refuses control lines past max_control_line (4 KiB by default): a topic
 * whose subject would be longer stays on its node (counted, logged). */
#define CLUSTER_SUBJECT_MAX 3800

/* Subjects kite uses, under "kite.": m (messages), r (retained changes,
 * a JetStream stream), t (session takeovers). A message's subject says
 * its QoS class first (m.0: QoS 0, m.1: QoS 1 and 2), so that the
 * JetStream stream for QoS 1/2 takes "kite.m.1.>" and nothing else, while
 * one NATS subscription per filter ("kite.m.*.<filter>") gets both. */
#define CLUSTER_PREFIX_MSG "kite.m"
#define CLUSTER_PREFIX_MSG_Q0 "kite.m.0"
#define CLUSTER_PREFIX_MSG_Q12 "kite.m.1"
#define CLUSTER_PREFIX_MSG_ANY "kite.m.*"
#define CLUSTER_PREFIX_RETAIN "kite.r"
#define CLUSTER_PREFIX_TAKEOVER "kite.t"
/* A persistent session's subscriptions, by client id (JetStream stream
 * KITE_SESSIONS, the last record per client). */
#define CLUSTER_PREFIX_SESSION "kite.s"
/* Session hand-over (docs/CLUSTER.md, "Sessions"): each node listens on
 * "kite.n.<node id, 16 hex digits>" for requests for a session it owns,
 * and gets the answers on "kite.h.<its node id>.<request number>". */
#define CLUSTER_PREFIX_NODE "kite.n"
#define CLUSTER_PREFIX_HANDOVER "kite.h"

/* prefix + "." + the topic, one NATS token per MQTT level, NUL terminated
 * in out[cap]. Bytes NATS reserves ('.', '*', '>', '%', space, control
 * bytes, DEL) become %XX; an empty level is the token "%" (a NATS token
 * cannot be empty). Returns the length, or -1 when it does not fit. */
int cluster_subject(const char *prefix, const char *topic, size_t len,
		    char *out, size_t cap);

/* The subjects a filter needs: '+' is '*', a final '#' is '>', and since
 * MQTT's "a/#" also matches "a", such a filter needs "p.a" and "p.a.>".
 * Writes 1 or 2 NUL-terminated subjects into out[0] and out[1]; returns
 * how many, or -1 (too long, or not a valid filter). */
int cluster_filter_subjects(const char *prefix, const char *filter,
			    size_t len, char out[2][CLUSTER_SUBJECT_MAX + 1]);

/* The topic back from a subject's tokens after the prefix and its dot.
 * Returns its length in out[cap], or -1 (not a subject kite made). */
int cluster_topic(const char *tokens, size_t len, char *out, size_t cap);

/* The envelope: a fixed header, the MQTT 5 pass-through properties, then
 * the payload. origin is the publishing node, seq its message number:
 * together they name one message, which a node that gets it twice (two
 * of its subscriptions matched) delivers once. */
#define CLUSTER_ENVELOPE_VERSION 1
#define CLUSTER_ENVELOPE_HEADER 26

struct cluster_envelope {
	uint8_t qos;
	bool retain;
	uint64_t origin;
	uint64_t seq;
	uint32_t expiry_s; /* 0: none */
	const uint8_t *props;
	uint32_t props_len;
	const uint8_t *payload;
	uint32_t payload_len;
};

/* Writes the header into hdr[CLUSTER_ENVELOPE_HEADER]; the properties and
 * the payload follow it on the wire. */
void cluster_envelope_header(const struct cluster_envelope *e, uint8_t *hdr);
/* Parses data[len]: 0, or -1 for bytes that are not an envelope (props and
 * payload point into data). */
int cluster_envelope_parse(const uint8_t *data, size_t len,
			   struct cluster_envelope *e);

/* A session's outgoing state moving to the node its client connected
 * to: one answer message is a chunk header (version, flags, count: u32)
 * and items. The last chunk has HANDOVER_END and its count is the number
 * of items of the whole answer; other chunks count their own items. */
#define CLUSTER_HANDOVER_VERSION 1
#define CLUSTER_HANDOVER_CHUNK_HEADER 6
#define CLUSTER_HANDOVER_END 1

enum cluster_handover_kind {
	HANDOVER_QUEUED = 1,   /* not sent yet: pid 0 */
	HANDOVER_INFLIGHT = 2, /* sent, not acknowledged: pid, state */
	HANDOVER_QOS2_IN = 3,  /* received at QoS 2, its PUBREL awaited */
};

#define CLUSTER_HANDOVER_SUBIDS_MAX 4

/* One message of a session (no message: an outgoing QoS 2 flow past
 * PUBREC, only PUBCOMP left). */
struct cluster_handover_item {
	uint8_t kind;  /* enum cluster_handover_kind */
	uint8_t state; /* HANDOVER_INFLIGHT: enum inflight_state */
	uint16_t pid;
	uint8_t dqos; /* the delivery's QoS, retain, subscription ids */
	bool dretain;
	uint8_t nsub;
	uint32_t sub[CLUSTER_HANDOVER_SUBIDS_MAX];
	bool has_msg;
	uint8_t qos; /* the message as published */
	bool retain;
	uint32_t expiry_s; /* left; 0: none */
	const uint8_t *topic;
	uint16_t topic_len;
	const uint8_t *props;
	uint32_t props_len;
	const uint8_t *payload;
	uint32_t payload_len;
};

/* Bytes it takes on the wire. */
size_t cluster_handover_item_size(const struct cluster_handover_item *it);
/* Writes it into out[cluster_handover_item_size(it)]. */
void cluster_handover_item_write(const struct cluster_handover_item *it,
				 uint8_t *out);
/* One item at data[len]: the bytes it took, or -1 for bytes that are not
 * one (topic, props and payload point into data). */
long cluster_handover_item_parse(const uint8_t *data, size_t len,
				 struct cluster_handover_item *it);
void cluster_handover_chunk_header(uint8_t *hdr, uint8_t flags,
				   uint32_t count);
/* 0, or -1 when data is not a chunk of a known version. */
int cluster_handover_chunk_parse(const uint8_t *data, size_t len,
				 uint8_t *flags, uint32_t *count);

#endif
