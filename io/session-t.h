/* Types of the session layer (io/session.c): what a client's session
 * holds across its connections, and how one message goes to it. */
#ifndef KITE_IO_SESSION_T_H
#define KITE_IO_SESSION_T_H

#include <stdbool.h>
#include <stdint.h>

#include "core/htab.h"
#include "core/trie.h"

/* Largest client id kite stores (the spec allows 65535). */
#define CLIENT_ID_MAX 65535

/* Subscription identifiers carried by one delivery (overlapping
 * subscriptions of one session merge into one delivery). */
#define DELIV_SUBIDS_MAX 4

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
struct acl_identity;
struct bridge;
struct msg;

/* One per client, like struct conn: it fits jemalloc's 256-byte size
 * class (issue 15; the next class is 320), hence the one-bit flags. What
 * a fan-out reads of every matched session comes first. */
struct session {
	struct shard *shard;
	struct conn *conn; /* NULL while offline */
	uint64_t id;	  /* unique in this broker's life: no local, shares */
	/* Fan-out merge of overlapping subscriptions: one delivery per
	 * session per message, at the highest granted QoS. */
	uint32_t match_gen;
	uint32_t match_slot;
	/* Access control: the identity that connected last and its
	 * compiled rules under the security snapshot acl_gen. */
	struct acl_identity *acl;
	uint32_t acl_gen;
	uint16_t next_pid;
	uint8_t listener;
	uint8_t protocol; /* of its last connection (logged with it) */
	bool persistent : 1;  /* expiry_s != 0: outlives its connection */
	bool zombie : 1;	  /* taken over by another shard; freed on its kick */
	bool pump_deferred : 1; /* its queue waits for a reload (session_pump) */
	/* Lost its connection during this event; ended (or kept offline)
	 * by conn_settle once nothing walks the shard's sessions. */
	bool ending : 1;
	bool logged : 1; /* its SESSION record is in the shard's log */
	bool q2_waiting : 1; /* in shard->q2_waiters */
	/* A bridge's local session, from its start or from the logs before
	 * its bridge adopts it: logged under a client id no client can
	 * have (persist.c), never in the client-id registry. */
	bool of_bridge : 1;
	uint16_t client_id_len;
	/* Session expiry interval (MQTT 5); 3.1.1: 0 for a clean session,
	 * UINT32_MAX (never) otherwise. */
	uint32_t expiry_s;
	struct bridge *bridge; /* the local side of a bridge (bridge.c) */
	/* The inflight window: a ring in send order (a resumed session
	 * resends in that order), positions if_head..if_tail (free-running;
	 * slot = position & (inflight_cap - 1)); an entry acked out of order
	 * stays as an INFLIGHT_DONE hole until the head passes it.
	 * inflight_count counts the live entries. if_index finds a packet
	 * id's slot (open addressing, 2 x inflight_cap cells of slot + 1,
	 * 0 empty), so an ack costs no scan whatever the window. */
	struct inflight *inflight;
	uint32_t *if_index;
	uint32_t inflight_count, inflight_cap;
	uint32_t if_head, if_tail;
	uint64_t inflight_bytes; /* payload bytes in flight (max_inflight_bytes) */
	struct queued *queue;	/* ring */
	uint32_t q_head, q_count, q_cap;
	uint32_t sub_count;
	uint64_t q_bytes;	/* payload bytes queued (max_queued_bytes) */
	struct qos2_in *qos2_in; /* QoS 2 received, awaiting PUBREL */
	uint32_t qos2_in_count, qos2_in_cap;
	struct sub_entry *subs;
	struct session *prev, *next; /* the shard's sessions */
	struct htab_link id_link;    /* the shard's by-id table */
	char *client_id;
	char *username;
	uint64_t expire_at_ms; /* offline deadline; 0 = none */
	struct will *delayed_will; /* MQTT 5 will delay pending */
	uint64_t will_at_ms;
	struct session *ending_next;
	uint64_t offline_wall_ms; /* logged: offline since (0: online) */
	/* Cluster: when its connection was accepted (wall clock, µs): a
	 * takeover announced by another node for an older connection than
	 * this one is ignored. */
	uint64_t connect_wall_us;
};
_Static_assert(sizeof(struct session) <= 256,
	       "struct session outgrew 256 bytes");

enum ack_result {
	ACK_DONE,    /* the packet id's flow moved on */
	ACK_UNKNOWN, /* no such packet id outstanding */
	ACK_WRONG,   /* outstanding, but for another QoS or step: a protocol
			error (Mosquitto closes the connection) */
};

struct delivery {
	struct session *ss;
	struct deliv d;
};

/* The inflight window in send order, holes included (state
 * INFLIGHT_DONE): for (i = ss->if_head; i != ss->if_tail; i++). With the
 * type, so that the log (persist.c, below this layer) can restate it. */
static inline struct inflight *session_inflight_at(const struct session *ss,
						   uint32_t pos)
{
	return &ss->inflight[pos & (ss->inflight_cap - 1)];
}

#endif
