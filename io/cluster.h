/* A kite cluster on NATS (docs/CLUSTER.md): several nodes behave as one
 * broker. NATS carries messages between nodes (one NATS subscription per
 * distinct filter of the node), session takeovers and retained messages
 * (a JetStream stream); kite writes no cluster protocol of its own.
 *
 * The NATS C client runs its own threads. Messages from NATS reach the
 * shards through one single-producer ring per shard (the client's one
 * delivery thread produces; the shard consumes, woken by MSG_RING), and
 * are routed on this node only: nothing received is published again.
 *
 * Everything here is a no-op unless cluster_nats_url is set (b->cluster
 * is then NULL and the hooks are not called). */
#ifndef KITE_CLUSTER_H
#define KITE_CLUSTER_H

#include <stdbool.h>
#include <stdint.h>

struct broker;
struct shard;
struct msg;

/* Connects (in the background: NATS need not be up), before the shards
 * run. 0, or -1 with the reason logged. Sets b->cluster. */
int cluster_start(struct broker *b);
/* Stops taking messages from NATS (before the shards stop). */
void cluster_stop(struct broker *b);
/* After the shards exited: frees what is left. */
void cluster_free(struct broker *b);

/* A shard gained its first (add) or lost its last subscription on filter:
 * the node subscribes on NATS while any shard has one. Any thread. */
void cluster_interest(struct broker *b, const char *filter, uint16_t len,
		      bool add);
/* A shared-subscription group ("GROUP/FILTER") appeared on (add) or left
 * its home shard: the node joins or leaves the NATS queue group. */
void cluster_share(struct broker *b, const char *key, uint16_t len, bool add);
/* A message published on this node by a client, a will or a bridge
 * goes to the other nodes. QoS 1/2 go through JetStream when it is
 * there: t (when not NULL) is then held until the stream stored the
 * message, so the publisher's acknowledgement waits for it. Shard
 * threads. */
struct persist_ticket;
void cluster_publish(struct shard *s, const struct msg *m,
		     struct persist_ticket *t);
/* Whether an acknowledgement of m waits for JetStream (so a ticket is
 * needed even without persistence). Shard threads. */
bool cluster_holds_ack(const struct broker *b, const struct msg *m);
/* A client connected here: other nodes close their session of that id. */
struct session;
void cluster_announce_session(struct shard *s, const struct session *ss);
/* Persistent sessions across nodes (the stream KITE_SESSIONS): the
 * owner records ss's subscriptions (an empty record once it is not
 * persistent any more, or expired: `gone`). Shard threads. */
void cluster_session_save(struct shard *s, const struct session *ss,
			  bool gone);
/* A persistent session new on this node: the subscriptions its last
 * owner recorded, if that session has not expired, are subscribed again
 * (those the client may still subscribe to). True when it did. */
bool cluster_session_restore(struct shard *s, struct session *ss);
/* A persistent session new on this node whose record names another
 * live node as its owner: that node is asked for the session's messages
 * (queued, in flight, QoS 2 state). True when the answer is awaited:
 * the CONNACK of c waits (c is parked by the caller) until it came, or
 * CLUSTER_HANDOVER_WAIT_MS passed, and then connect_resume runs. False:
 * nothing to wait for. Shard threads. */
struct conn;
bool cluster_session_fetch(struct shard *s, struct conn *c,
			   struct session *ss);
/* What the cluster asks of the layers above, registered by the broker
 * before the shards run: the connection waiting for its session's
 * messages goes on (they are in ss now, or did not come). */
struct cluster_upcalls {
	void (*connect_resume)(struct shard *s, struct conn *c,
			       struct session *ss);
};
void cluster_set_upcalls(const struct cluster_upcalls *up);
/* Each loop turn: what NATS brought for this shard. */
void cluster_drain(struct shard *s);

#endif
