/* Sessions (io/session.c): what a client id holds across connections,
 * the client-id registry that says which shard holds it, and the
 * persistence seam: every change to durable session state goes through
 * these. */
#ifndef KITE_IO_SESSION_H
#define KITE_IO_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "acl/acl.h"
#include "io/session-t.h"
#include "io/shard-t.h"

/* What sessions ask of the layers above them: routing a will, a
 * bridge's topic mapping on delivery, the cluster's interest in a
 * filter and its record of a persistent session. Each of those calls down into sessions, so these go through
 * this table, registered once by the broker before the shards start. */
struct session_upcalls {
	bool (*route_publish)(struct shard *s, struct msg *m);
	void (*bridge_deliver)(struct session *ss, struct msg *m,
			       const struct deliv *d);
	void (*cluster_interest)(struct broker *b, const char *filter,
				 uint16_t len, bool add);
	void (*cluster_session_save)(struct shard *s, const struct session *ss,
				     bool gone);
};
void session_set_upcalls(const struct session_upcalls *up);

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
/* Drops a pending delayed will: the client is back in time. */
void session_cancel_will(struct session *ss);
/* Offline sessions whose expiry passed end; delayed wills fire. */
void session_check_timers(struct shard *s);
/* Makes sure the tick looks at sessions again by `at_ms`. */
void session_timer_at(struct shard *s, uint64_t at_ms);
/* What an acknowledgement from the client matched. */
enum ack_result session_on_puback(struct session *ss, uint16_t pid);
/* A reason code >= 0x80 (MQTT 5) ends the QoS 2 flow there: no PUBREL. */
enum ack_result session_on_pubrec(struct session *ss, uint16_t pid,
				  uint8_t reason);
enum ack_result session_on_pubcomp(struct session *ss, uint16_t pid);
/* A packet id not in flight (bridges number SUBSCRIBEs from the same
 * sequence, as Mosquitto does). */
uint16_t session_next_pid(struct session *ss);
/* Reconnect: resend the inflight window with DUP, then queued messages. */
void session_resume(struct session *ss);
/* Drops what waits in the queue, never sent (a bridge's clean local
 * session whose link failed before it was up). */
void session_drop_queue(struct session *ss);
/* Moves queued messages into the inflight window while it has room. */
void session_pump(struct session *ss);
/* Pumps the queues that waited for a reload, once none is pending. */
void session_pump_deferred(struct shard *s);
/* Incoming QoS 2: held until PUBREL. _release returns the message (the
 * caller gets the reference) or NULL for an unknown id. */
bool session_qos2_seen(struct session *ss, uint16_t pid);
int session_qos2_add(struct session *ss, uint16_t pid, struct msg *m);
struct msg *session_qos2_release(struct session *ss, uint16_t pid);

/* The client-id registry (b->reg, under b->reg_lock): written at CONNECT
 * and at a session's end only. h is hash_bytes(id, len), taken before the
 * lock so a long client id does not hold it. */
struct client_entry *session_reg_find(struct broker *b, uint64_t h,
				      const char *id, uint16_t len);
struct client_entry *session_reg_insert(struct broker *b, uint64_t h,
					const char *id, uint16_t len);
/* Takes the session's connection away for a new one (a takeover). */
void session_detach_conn(struct session *ss, const char *why,
			 bool session_ends);
/* On the session's shard: another connection took the session over. */
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
/* The same, except that the session is handed to the caller (out of the
 * registry, its connection still attached) to move to the other node;
 * NULL when this node has none older than at_wall_us. */
struct session *session_take_remote(struct shard *s, const char *id,
				    uint16_t len, uint64_t at_wall_us);

const struct acl_identity *session_acl(struct session *ss);
bool session_may(struct session *ss, const char *topic, size_t len,
		 enum acl_access access);
/* Access control for the session's identity (security snapshot of its
 * shard, re-fetched after a reload). */
bool session_may_subscribe(struct session *ss, const char *filter, size_t len);
/* The SUB_READ_OK bits of the session's subscriptions, decided again
 * (its identity or the ACL changed). */
void session_recheck_reads(struct session *ss);
void session_set_identity(struct session *ss, unsigned listener,
			  const char *username);
#endif
