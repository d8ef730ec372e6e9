/* The cluster on NATS (io/cluster.h, docs/CLUSTER.md). */
#include "io/cluster.h"

#include <inttypes.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/clusterwire.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/retain.h"
#include "io/conn.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/session.h"
#include "io/shard.h"
#include "io/share.h"

/* Items from NATS waiting for one shard. */
#define CLUSTER_RING_SLOTS 4096
/* Recently seen (origin, seq) pairs, direct-mapped: the copies of one
 * message that two overlapping subscriptions bring arrive next to each
 * other, so a small table catches them; a miss costs a duplicate, never
 * a loss (pairs are compared in full). */
#define CLUSTER_SEEN_SLOTS 16384
/* How long a node waits between attempts to reach NATS. */
#define CLUSTER_RECONNECT_WAIT_MS 250
/* Servers listed in cluster_nats_url. */
#define CLUSTER_SERVERS_MAX 16
/* QoS 1/2 between nodes (docs/CLUSTER.md): a JetStream stream keeps them
 * for a node that lost its link. Its max age is the longest outage a
 * node recovers from; its size bounds the servers' disk. */
#define CLUSTER_MSGS_STREAM "KITE_MSGS"
#define CLUSTER_MSGS_MAX_AGE_S 300
#define CLUSTER_MSGS_MAX_BYTES (1ll << 30)
/* A publish JetStream did not confirm within this is sent again, with
 * the same message id (the stream drops a copy it already has). */
#define CLUSTER_JS_ACK_WAIT_MS 2000
#define CLUSTER_JS_RETRY_MS 250
/* Past this the publisher's acknowledgement is withheld (its connection
 * closed): it sends again, to whichever node it reaches. */
#define CLUSTER_JS_GIVE_UP_MS 30000
/* Publishes not confirmed yet: past it a shard does not hand more to
 * libnats (which would stall it); they wait on the retry list. Memory is
 * bounded by the publishers' inflight windows (their acks wait). */
#define CLUSTER_JS_PENDING_MAX 65536
/* Sends again per turn of the JetStream thread, so that pend_lock (which
 * shards take) is held briefly. */
#define CLUSTER_JS_RETRY_BATCH 1024
/* A replay starts this much before the link was seen down: what was in
 * flight then. The (origin, seq) check drops what arrived anyway. */
#define CLUSTER_REPLAY_MARGIN_MS 2000
/* A replay that did not reach its end by then is stopped. */
#define CLUSTER_REPLAY_MAX_MS 60000
/* A session whose record would be larger is not carried to other nodes
 * (logged): its subscriptions stay on the node that has it. */
#define CLUSTER_SESSION_RECORD_MAX (64 << 10)
/* How long a JetStream request (stream info, consumer) waits. */
#define CLUSTER_JS_REQUEST_WAIT_MS 2000
/* The JetStream thread's turn: retries and replays. */
#define CLUSTER_TICK_MS 50
/* How long a CONNACK waits for a session's messages from the node that
 * had it (docs/CLUSTER.md, "Sessions"); a dead node's NATS subscription
 * is gone, so NATS answers "no responders" at once and nobody waits. */
#define CLUSTER_HANDOVER_WAIT_MS 2500
/* An answer that comes after that (a node frozen or cut off for a while)
 * is still taken, into the session as queued messages, up to this long
 * after the ask; later ones are dropped. */
#define CLUSTER_HANDOVER_LATE_MS 30000
/* One hand-over's answer held in memory at most: past it the rest is
 * dropped (logged). A session's queue is bounded by max_queued_messages
 * and max_queued_bytes on the node that sends it. */
#define CLUSTER_HANDOVER_BYTES_MAX (512ull << 20)
/* An answer's chunk when the NATS server did not say its max_payload. */
#define CLUSTER_HANDOVER_CHUNK_DEFAULT (1 << 20)

_Static_assert((CLUSTER_RING_SLOTS & (CLUSTER_RING_SLOTS - 1)) == 0, "pow2");
_Static_assert((CLUSTER_SEEN_SLOTS & (CLUSTER_SEEN_SLOTS - 1)) == 0, "pow2");

enum cin_kind {
	CIN_MSG = 1, /* ptr: struct msg *, routed on this node */
	CIN_KICK,    /* ptr: struct cluster_kick *, a session to close */
	CIN_RETAIN,  /* ptr: struct msg *, the topic's retained message
			(an empty payload clears it) */
	CIN_SHARE,   /* ptr: struct share_in *, for a shared subscription */
	CIN_TICKET,  /* ptr: struct persist_ticket *, JetStream's hold ends */
	CIN_ASK,     /* ptr: struct handover_ask *, another node asks for
			the session it takes over */
	CIN_HANDOVER, /* ptr: struct handover *, the answer to our ask (or
			 its timeout) */
};

/* Another node asks for a session of ours (its client connected there). */
struct handover_ask {
	uint64_t at_wall_us;
	char reply[64];
	uint16_t len;
	char id[];
};

/* Our ask for a session another node owns, waiting for its answer: the
 * chunks (natsMsg) as they came, until the end marker. */
struct handover {
	struct htab_link link;
	struct handover *prev, *next; /* the waiting ones, for timeouts */
	uint64_t req, owner, session_key, deadline_ms;
	unsigned shard;
	uint32_t conn_id, conn_gen;
	/* timed_out: the connection went on without the answer; the ask
	 * waits for a late one (CLUSTER_HANDOVER_LATE_MS). notice: only
	 * tells the shard so (the ask itself still waits). */
	bool ended, no_owner, timed_out, notice, cut;
	uint32_t count; /* the end marker's */
	uint32_t nmsgs, cap;
	size_t bytes;
	natsMsg **msgs;
};

/* A QoS 1/2 publish JetStream has not confirmed yet, by its seq. */
struct js_pend {
	struct htab_link link;
	uint64_t seq;
	struct persist_ticket *t; /* NULL: no acknowledgement waits */
	natsMsg *retry;		  /* ours while it waits to be sent again */
	uint64_t retry_at_ms, give_up_ms;
	struct js_pend *next_retry;
};

/* A message NATS gave this node's member of a queue group. */
struct share_in {
	struct msg *m;
	uint16_t len;
	char key[]; /* "GROUP/FILTER" */
};

/* A shared-subscription group with a home on this node: one NATS queue
 * subscription per subject of its filter, queue named after the group, so
 * NATS gives each message to one node of those that have the group. Freed
 * once NATS says its handlers are done (natsSubscription_SetOnCompleteCB). */
struct share_sub {
	struct htab_link link;
	struct cluster *cl;
	uint32_t refs;
	natsSubscription *sub[2];
	_Atomic int live;
	uint16_t len;
	char key[];
};

struct cin_item {
	uint8_t kind;
	void *ptr;
};

struct cin_ring {
	_Atomic uint32_t head; /* the shard */
	char pad0[60];
	_Atomic uint32_t tail; /* the NATS delivery thread */
	char pad1[60];
	/* A MSG_RING is on its way: later pushes need not send another.
	 * The shard clears it before it reads tail. */
	_Atomic bool woken;
	char pad2[63];
	struct cin_item items[CLUSTER_RING_SLOTS];
};

struct cluster_kick {
	uint64_t at_wall_us;
	uint16_t len;
	char id[];
};

/* One distinct filter of this node: the shards that hold it, and its
 * NATS subscriptions ("a/#" needs two). */
struct interest {
	struct htab_link link;
	uint32_t refs;
	natsSubscription *sub[2];
	uint16_t len;
	char filter[];
};

struct seen {
	uint64_t origin, seq;
};

/* The last record of a persistent session on any node: the connect time
 * of the connection that wrote it (its owner's epoch: a late record of
 * an older owner loses), when it was written (wall µs), its expiry, its
 * subscriptions (the record's body: per subscription options u8, sub_id
 * u32, length u16, filter). gone: the session ended (body empty). */
struct sess_rec {
	struct htab_link link;
	uint64_t epoch, at_wall_us;
	uint64_t owner; /* the node that wrote it */
	bool gone;
	uint32_t expiry_s; /* UINT32_MAX: never */
	uint32_t body_len;
	uint8_t *body;
	uint16_t id_len;
	char id[];
};

struct cluster {
	struct broker *b;
	natsOptions *opts;
	natsConnection *nc;
	natsSubscription *takeover_sub;
	/* Queue subscriptions for shared subscriptions: a connection of
	 * their own, which does get this node's publishes (the first one
	 * does not: no echo). */
	natsConnection *nc_share;
	struct htab shares;
	/* Retained messages: a JetStream stream keeping the last message
	 * per subject, followed by an ordered consumer from its start. Set
	 * up by a thread of its own once NATS answers. */
	jsCtx *js;
	natsSubscription *retain_sub;
	pthread_t setup_thread;
	bool setup_started;
	/* QoS 1/2 through the stream KITE_MSGS, once it exists. */
	_Atomic bool js_msgs;
	pthread_mutex_t pend_lock;
	struct htab pend;	      /* struct js_pend by seq */
	uint32_t pend_count;
	struct js_pend *retry_head; /* those waiting to be sent again */
	/* The main link went down at (wall µs, 0 while up); a replay from
	 * replay_from_us is due once it is back (0: none). */
	_Atomic uint64_t down_since_us, replay_from_us;
	/* The replay running (the JetStream thread's): up to end_seq. */
	natsSubscription *replay_sub;
	uint64_t replay_start_us, replay_end_seq, replay_deadline_ms;
	/* Persistent sessions of the cluster (KITE_SESSIONS, followed from
	 * its start), by client id. */
	_Atomic bool js_sessions;
	natsSubscription *session_sub;
	pthread_mutex_t sess_lock;
	struct htab sessions;
	/* Session hand-over: asks to this node ("kite.n.<id>"), answers
	 * to ours ("kite.h.<id>.*"), our asks waiting (ho_wait, also
	 * listed for timeouts). */
	natsSubscription *ask_sub, *answer_sub;
	pthread_mutex_t ho_lock;
	struct htab ho_wait;
	struct handover *ho_list;
	_Atomic uint64_t ho_seq, ho_timeouts, ho_moved;
	_Atomic bool replay_caught_up;
	_Atomic uint64_t js_stored, js_retries, js_refused, replayed;
	uint64_t node_id;
	char node[64];
	_Atomic uint64_t seq;
	pthread_mutex_t interest_lock;
	struct htab interest;
	/* Producers: the client's delivery thread(s). The shards' side is
	 * lock-free. */
	pthread_mutex_t in_lock;
	_Atomic bool closing;
	struct io_uring wake;
	struct cin_ring *rings; /* [nshards] */
	struct seen *seen;
	_Atomic uint64_t published, received, duplicates, failures;
};

static _Thread_local uint8_t *scratch;
static _Thread_local size_t scratch_cap;
/* Frees a thread's scratch when the thread ends. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_make(void)
{
	(void)pthread_key_create(&scratch_key, free);
}

/* ---- from NATS to the shards --------------------------------------------- */

static bool seen_before(struct cluster *cl, uint64_t origin, uint64_t seq)
{
	uint64_t h = (origin ^ (seq * 0x9e3779b97f4a7c15ull)) >> 17;
	struct seen *e = &cl->seen[h & (CLUSTER_SEEN_SLOTS - 1)];
	if (e->origin == origin && e->seq == seq)
		return true;
	e->origin = origin;
	e->seq = seq;
	return false;
}

/* Under in_lock. Waits for room: NATS then holds the messages (up to the
 * subscription's pending limits, past which it reports a slow consumer). */
static void cin_push(struct cluster *cl, unsigned dst, struct cin_item it)
{
	struct cin_ring *r = &cl->rings[dst];
	uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	while (tail - atomic_load_explicit(&r->head, memory_order_acquire) ==
	       CLUSTER_RING_SLOTS) {
		if (atomic_load(&cl->closing))
			return;
		usleep(200);
	}
	r->items[tail & (CLUSTER_RING_SLOTS - 1)] = it;
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	if (atomic_exchange(&r->woken, true))
		return;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&cl->wake);
	if (!sqe)
		return; /* the shard drains every turn anyway */
	io_uring_prep_msg_ring(sqe, cl->b->shards[dst].ring.ring_fd, 0,
			       ud_pack(UD_WAKE, 0, 0), 0);
	io_uring_submit_and_wait(&cl->wake, 1);
	struct io_uring_cqe *cqe;
	if (io_uring_peek_cqe(&cl->wake, &cqe) == 0)
		io_uring_cqe_seen(&cl->wake, cqe);
}

/* A message's subject starts "kite.m.0." or "kite.m.1." (what else is
 * refused by the decoder as not kite's). */
static const char *msg_prefix(natsMsg *nm)
{
	static const char q12[] = CLUSTER_PREFIX_MSG_Q12 ".";
	return strncmp(natsMsg_GetSubject(nm), q12, sizeof(q12) - 1)
		       ? CLUSTER_PREFIX_MSG_Q0 "."
		       : q12;
}

static int cluster_msg_decode(struct cluster *cl, natsMsg *nm,
			      const char *prefix, char *topic,
			      struct cluster_envelope *e);

static struct msg *msg_of_envelope(struct cluster *cl, const char *topic,
				   int tlen, const struct cluster_envelope *e)
{
	struct msg *m = msg_new((const uint8_t *)topic, (uint16_t)tlen,
				e->payload, e->payload_len, e->qos, e->retain,
				e->props_len ? e->props : NULL, e->props_len);
	if (!m) {
		atomic_fetch_add(&cl->failures, 1);
		return NULL;
	}
	m->expiry_s = e->expiry_s;
	m->created_ms = shard_clock_ms();
	return m;
}

static void cluster_share_cb(natsConnection *nc, natsSubscription *sub,
			     natsMsg *nm, void *closure)
{
	struct share_sub *ss = closure;
	struct cluster *cl = ss->cl;
	struct cluster_envelope e;
	char topic[CLUSTER_SUBJECT_MAX];
	int tlen = cluster_msg_decode(cl, nm, msg_prefix(nm), topic, &e);
	if (tlen < 0)
		return;
	struct msg *m = msg_of_envelope(cl, topic, tlen, &e);
	natsMsg_Destroy(nm);
	if (!m)
		return;
	struct share_in *in = malloc(sizeof(*in) + ss->len);
	if (!in) {
		msg_unref(m);
		return;
	}
	in->m = m;
	in->len = ss->len;
	memcpy(in->key, ss->key, ss->len);
	pthread_mutex_lock(&cl->in_lock);
	if (atomic_load(&cl->closing)) {
		msg_unref(m);
		free(in);
	} else {
		cin_push(cl, share_home(cl->b, in->key, in->len),
			 (struct cin_item){CIN_SHARE, in});
	}
	pthread_mutex_unlock(&cl->in_lock);
}

/* A message's topic (its subject past `prefix`, which ends in '.') and
 * envelope; -1, counted and the message destroyed, when either is bad. */
static int cluster_msg_decode(struct cluster *cl, natsMsg *nm,
			      const char *prefix, char *topic,
			      struct cluster_envelope *e)
{
	const char *subj = natsMsg_GetSubject(nm);
	size_t slen = strlen(subj), plen = strlen(prefix);
	int tlen = -1;
	if (slen > plen && !memcmp(subj, prefix, plen))
		tlen = cluster_topic(subj + plen, slen - plen, topic,
				     CLUSTER_SUBJECT_MAX);
	if (tlen < 0 ||
	    cluster_envelope_parse((const uint8_t *)natsMsg_GetData(nm),
				   (size_t)natsMsg_GetDataLength(nm), e) < 0) {
		atomic_fetch_add(&cl->failures, 1);
		natsMsg_Destroy(nm);
		return -1;
	}
	return tlen;
}

/* Under in_lock: a message from another node, once per node. */
static void cluster_msg_in(struct cluster *cl, const char *topic, int tlen,
			   const struct cluster_envelope *e)
{
	if (atomic_load(&cl->closing)) {
		/* nothing more goes to the shards */
	} else if (seen_before(cl, e->origin, e->seq)) {
		atomic_fetch_add_explicit(&cl->duplicates, 1, memory_order_relaxed);
	} else {
		struct msg *m = msg_of_envelope(cl, topic, tlen, e);
		if (m) {
			/* Same topic, same shard: the ring keeps its order. */
			unsigned d = (unsigned)(hash_bytes(topic, (size_t)tlen) %
						cl->b->nshards);
			cin_push(cl, d, (struct cin_item){CIN_MSG, m});
			atomic_fetch_add_explicit(&cl->received, 1,
						  memory_order_relaxed);
		}
	}
}

static void cluster_msg_cb(natsConnection *nc, natsSubscription *sub,
			   natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	char topic[CLUSTER_SUBJECT_MAX];
	struct cluster_envelope e;
	int tlen = cluster_msg_decode(cl, nm, msg_prefix(nm), topic, &e);
	if (tlen < 0)
		return;
	pthread_mutex_lock(&cl->in_lock);
	cluster_msg_in(cl, topic, tlen, &e);
	pthread_mutex_unlock(&cl->in_lock);
	natsMsg_Destroy(nm);
}

/* The stream KITE_MSGS from when the link broke: what this node may have
 * missed. Its own messages it routed itself; what it already had the
 * (origin, seq) check drops. */
static void cluster_replay_cb(natsConnection *nc, natsSubscription *sub,
			      natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	jsMsgMetaData *meta = NULL;
	uint64_t sseq = natsMsg_GetMetaData(&meta, nm) == NATS_OK
				? meta->Sequence.Stream : 0;
	jsMsgMetaData_Destroy(meta);
	if (sseq >= cl->replay_end_seq)
		atomic_store(&cl->replay_caught_up, true);
	char topic[CLUSTER_SUBJECT_MAX];
	struct cluster_envelope e;
	/* Past the end: live delivery brings those. */
	if (sseq > cl->replay_end_seq) {
		natsMsg_Destroy(nm);
		return;
	}
	int tlen = cluster_msg_decode(cl, nm, msg_prefix(nm), topic, &e);
	if (tlen < 0)
		return;
	if (e.origin != cl->node_id) {
		pthread_mutex_lock(&cl->in_lock);
		cluster_msg_in(cl, topic, tlen, &e);
		pthread_mutex_unlock(&cl->in_lock);
		atomic_fetch_add_explicit(&cl->replayed, 1, memory_order_relaxed);
	}
	natsMsg_Destroy(nm);
}

/* A retained change (the stream replays every topic's last one first). */
static void cluster_retain_cb(natsConnection *nc, natsSubscription *sub,
			      natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	char topic[CLUSTER_SUBJECT_MAX];
	struct cluster_envelope e;
	int tlen = cluster_msg_decode(cl, nm, CLUSTER_PREFIX_RETAIN ".", topic, &e);
	if (tlen < 0)
		return;
	struct msg *m = msg_new((const uint8_t *)topic, (uint16_t)tlen,
				e.payload, e.payload_len, e.qos, true,
				e.props_len ? e.props : NULL, e.props_len);
	if (m) {
		/* Its expiry counts from now: the stream does not say how
		 * long it was stored (documented). */
		m->expiry_s = e.expiry_s;
		m->created_ms = shard_clock_ms();
		pthread_mutex_lock(&cl->in_lock);
		unsigned d = (unsigned)(hash_bytes(topic, (size_t)tlen) %
					cl->b->nshards);
		if (atomic_load(&cl->closing))
			msg_unref(m);
		else
			cin_push(cl, d, (struct cin_item){CIN_RETAIN, m});
		pthread_mutex_unlock(&cl->in_lock);
	}
	natsMsg_Destroy(nm);
}

/* A client connected on another node: close ours. */
static void cluster_takeover_cb(natsConnection *nc, natsSubscription *sub,
				natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	const uint8_t *d = (const uint8_t *)natsMsg_GetData(nm);
	int len = natsMsg_GetDataLength(nm);
	struct cluster_envelope e = {0};
	if (cluster_envelope_parse(d, (size_t)len, &e) < 0 ||
	    e.origin == cl->node_id || !e.payload_len ||
	    e.payload_len > CLIENT_ID_MAX) {
		natsMsg_Destroy(nm);
		return;
	}
	int home = session_home(cl->b, (const char *)e.payload,
				(uint16_t)e.payload_len);
	struct cluster_kick *k = home < 0 ? NULL : malloc(sizeof(*k) + e.payload_len);
	if (k) {
		k->len = (uint16_t)e.payload_len;
		k->at_wall_us = e.seq;
		memcpy(k->id, e.payload, e.payload_len);
		pthread_mutex_lock(&cl->in_lock);
		if (atomic_load(&cl->closing))
			free(k);
		else
			cin_push(cl, (unsigned)home, (struct cin_item){CIN_KICK, k});
		pthread_mutex_unlock(&cl->in_lock);
	}
	natsMsg_Destroy(nm);
}

static void handover_answer(struct shard *s, struct handover_ask *a);
static void handover_restore(struct shard *s, struct handover *h);

void cluster_drain(struct shard *s)
{
	struct cin_ring *r = &s->b->cluster->rings[s->idx];
	atomic_store(&r->woken, false);
	uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	for (;;) {
		uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (head == tail)
			break;
		while (head != tail) {
			struct cin_item it = r->items[head & (CLUSTER_RING_SLOTS - 1)];
			head++;
			atomic_store_explicit(&r->head, head, memory_order_release);
			if (it.kind == CIN_MSG) {
				route_remote(s, it.ptr);
			} else if (it.kind == CIN_SHARE) {
				struct share_in *in = it.ptr;
				share_route_remote(s, in->key, in->len, in->m);
				free(in);
			} else if (it.kind == CIN_TICKET) {
				persist_ticket_settle(s, it.ptr);
			} else if (it.kind == CIN_ASK) {
				handover_answer(s, it.ptr);
				free(it.ptr);
			} else if (it.kind == CIN_HANDOVER) {
				handover_restore(s, it.ptr);
			} else if (it.kind == CIN_RETAIN) {
				struct msg *m = it.ptr;
				if (!m->payload_len ||
				    retain_set(s->b->retained, msg_topic(m),
					       m->topic_len, m) < 0) {
					retain_set(s->b->retained, msg_topic(m),
						   m->topic_len, NULL);
					msg_unref(m);
				}
			} else {
				struct cluster_kick *k = it.ptr;
				session_kick_remote(s, k->id, k->len,
						    k->at_wall_us);
				free(k);
			}
			conn_settle(s);
		}
	}
}

/* ---- from the shards to NATS --------------------------------------------- */

static uint8_t *scratch_get(size_t n)
{
	if (n > scratch_cap) {
		uint8_t *p = realloc(scratch, n);
		if (!p)
			return NULL;
		scratch = p;
		scratch_cap = n;
		pthread_once(&scratch_once, scratch_key_make);
		(void)pthread_setspecific(scratch_key, p);
	}
	return scratch;
}

static void cluster_fail(struct cluster *cl, const char *what, const char *topic,
			 size_t len, natsStatus st)
{
	/* Logged once per 1024 failures: a cluster that is down must not
	 * flood the log at the publish rate. */
	if ((atomic_fetch_add(&cl->failures, 1) & 1023) == 0)
		log_msg(KITE_LOG_WARNING, "cluster: %s '%.*s' not sent to the "
			"other nodes: %s", what, (int)(len > 200 ? 200 : len),
			topic, st == NATS_OK ? "subject too long"
					     : natsStatus_GetText(st));
}

/* ---- JetStream: QoS 1/2 between nodes ------------------------------------ */

static uint64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static bool pend_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	return htab_entry(l, const struct js_pend, link)->seq ==
	       *(const uint64_t *)key;
}

static uint64_t pend_hash(uint64_t seq)
{
	return seq * 0x9e3779b97f4a7c15ull;
}

/* Under pend_lock. */
static void pend_retry_later(struct cluster *cl, struct js_pend *p,
			     natsMsg *nm)
{
	p->retry = nm;
	p->retry_at_ms = shard_clock_ms() + CLUSTER_JS_RETRY_MS;
	p->next_retry = cl->retry_head;
	cl->retry_head = p;
}

/* JetStream has it (or, refused, gave up on it): the acknowledgement
 * waiting for it may leave, on the shard that holds it. */
static void pend_settle(struct cluster *cl, struct js_pend *p, bool refused)
{
	struct persist_ticket *t = p->t;
	free(p);
	if (!t)
		return;
	if (refused)
		atomic_store(&t->refused, true);
	pthread_mutex_lock(&cl->in_lock);
	if (!atomic_load(&cl->closing)) {
		cin_push(cl, t->origin, (struct cin_item){CIN_TICKET, t});
		t = NULL;
	}
	pthread_mutex_unlock(&cl->in_lock);
	/* Stopping: no shard runs it any more. */
	if (t && atomic_fetch_sub(&t->pending, 1) == 1)
		persist_ticket_discard(t);
}

/* libnats's thread for the async publishes' answers (or its timer). */
static void cluster_js_ack_cb(jsCtx *js, natsMsg *nm, jsPubAck *pa,
			      jsPubAckErr *pae, void *closure)
{
	struct cluster *cl = closure;
	struct cluster_envelope e;
	if (cluster_envelope_parse((const uint8_t *)natsMsg_GetData(nm),
				   (size_t)natsMsg_GetDataLength(nm), &e) < 0) {
		natsMsg_Destroy(nm);
		return;
	}
	pthread_mutex_lock(&cl->pend_lock);
	struct js_pend *p = htab_entry(htab_find(&cl->pend, pend_hash(e.seq),
						 &e.seq, sizeof(e.seq),
						 pend_eq_cb),
				       struct js_pend, link);
	if (p && !pae) {
		htab_remove(&cl->pend, &p->link);
		cl->pend_count--;
	} else if (p) {
		/* Not stored: no answer in time, no stream leader yet (a
		 * NATS server died), the link broke. Sent again after a
		 * pause, with its message id. */
		pend_retry_later(cl, p, nm);
		nm = NULL;
		p = NULL;
	}
	pthread_mutex_unlock(&cl->pend_lock);
	natsMsg_Destroy(nm);
	if (p) {
		atomic_fetch_add_explicit(&cl->js_stored, 1, memory_order_relaxed);
		pend_settle(cl, p, false);
	}
}

bool cluster_holds_ack(const struct broker *b, const struct msg *m)
{
	return m->qos &&
	       atomic_load_explicit(&b->cluster->js_msgs, memory_order_acquire) &&
	       !(m->topic_len >= 4 && !memcmp(msg_topic(m), "$SYS", 4));
}

/* A QoS 1/2 message into the stream (which is also a core publish: the
 * nodes with interest get it at once). t, when there is one, waits for
 * the stream's answer. Never blocks the shard: what libnats does not take
 * now is sent again by the JetStream thread. */
static void js_publish(struct cluster *cl, const char *subj,
		       const uint8_t *buf, size_t n, uint64_t seq,
		       struct persist_ticket *t)
{
	char id[48];
	snprintf(id, sizeof(id), "%016" PRIx64 ".%" PRIu64, cl->node_id, seq);
	natsMsg *nm = NULL;
	bool full = false;
	struct js_pend *p = calloc(1, sizeof(*p));
	natsStatus st = p ? natsMsg_Create(&nm, subj, NULL, (const char *)buf,
					   (int)n)
			  : NATS_NO_MEMORY;
	if (st == NATS_OK)
		st = natsMsgHeader_Set(nm, "Nats-Msg-Id", id);
	if (st == NATS_OK) {
		p->seq = seq;
		p->t = t;
		p->give_up_ms = shard_clock_ms() + CLUSTER_JS_GIVE_UP_MS;
		pthread_mutex_lock(&cl->pend_lock);
		if (htab_insert(&cl->pend, &p->link, pend_hash(seq)) < 0)
			st = NATS_NO_MEMORY;
		else
			full = ++cl->pend_count > CLUSTER_JS_PENDING_MAX;
		pthread_mutex_unlock(&cl->pend_lock);
	}
	if (st != NATS_OK) {
		/* Out of memory: at most once, as without JetStream. */
		natsMsg_Destroy(nm);
		free(p);
		st = natsConnection_Publish(cl->nc, subj, buf, (int)n);
		cluster_fail(cl, "message on", subj, strlen(subj), st);
		return;
	}
	/* The creator's hold keeps t alive until routing is done, so
	 * the ack handler cannot run it before this returns. */
	if (t)
		persist_ticket_hold(t);
	jsPubOptions o;
	jsPubOptions_Init(&o);
	o.MaxWait = CLUSTER_JS_ACK_WAIT_MS;
	st = full ? NATS_INSUFFICIENT_BUFFER : js_PublishMsgAsync(cl->js, &nm, &o);
	if (st == NATS_OK) {
		atomic_fetch_add_explicit(&cl->published, 1, memory_order_relaxed);
		return;
	}
	/* Not taken (too many unconfirmed, or the link is down with its
	 * buffer full): no answer will come, it is ours to send again. */
	pthread_mutex_lock(&cl->pend_lock);
	pend_retry_later(cl, p, nm);
	pthread_mutex_unlock(&cl->pend_lock);
}

/* The JetStream thread, each turn: sends again what waits for it, and
 * gives up on what waited too long. */
static void js_retry_tick(struct cluster *cl)
{
	uint64_t now = shard_clock_ms();
	struct js_pend *given_up = NULL;
	uint32_t sent = 0;
	bool sent_out = false;
	jsPubOptions o;
	jsPubOptions_Init(&o);
	o.MaxWait = CLUSTER_JS_ACK_WAIT_MS;
	pthread_mutex_lock(&cl->pend_lock);
	struct js_pend **pp = &cl->retry_head;
	while (*pp) {
		struct js_pend *p = *pp;
		if (now >= p->give_up_ms) {
			*pp = p->next_retry;
			htab_remove(&cl->pend, &p->link);
			cl->pend_count--;
			natsMsg_Destroy(p->retry);
			p->next_retry = given_up;
			given_up = p;
			continue;
		}
		if (now < p->retry_at_ms || sent_out) {
			pp = &p->next_retry;
			continue;
		}
		/* Its answer takes pend_lock: it cannot run before this
		 * entry is off the list. */
		natsMsg *nm = p->retry;
		if (js_PublishMsgAsync(cl->js, &nm, &o) == NATS_OK) {
			*pp = p->next_retry;
			p->retry = NULL;
			atomic_fetch_add_explicit(&cl->js_retries, 1,
						  memory_order_relaxed);
			sent_out = ++sent >= CLUSTER_JS_RETRY_BATCH;
		} else {
			/* libnats takes no more now: the rest next turn. */
			p->retry_at_ms = now + CLUSTER_JS_RETRY_MS;
			pp = &p->next_retry;
			sent_out = true;
		}
	}
	pthread_mutex_unlock(&cl->pend_lock);
	while (given_up) {
		struct js_pend *p = given_up;
		given_up = p->next_retry;
		if ((atomic_fetch_add(&cl->js_refused, 1) & 1023) == 0)
			log_msg(KITE_LOG_WARNING, "cluster: JetStream did not "
				"store a QoS %s message in %d s: its publisher's "
				"acknowledgement is withheld (it sends again)",
				"1/2", CLUSTER_JS_GIVE_UP_MS / 1000);
		pend_settle(cl, p, true);
	}
}

void cluster_publish(struct shard *s, const struct msg *m,
		     struct persist_ticket *t)
{
	struct cluster *cl = s->b->cluster;
	const char *topic = msg_topic(m);
	/* Each node has its own $SYS. */
	if (m->topic_len >= 4 && !memcmp(topic, "$SYS", 4))
		return;
	uint32_t left = msg_expiry_left(m, s->now_ms);
	if (!left)
		return;
	bool js = m->qos &&
		  atomic_load_explicit(&cl->js_msgs, memory_order_acquire);
	char subj[CLUSTER_SUBJECT_MAX + 1];
	if (cluster_subject(m->qos ? CLUSTER_PREFIX_MSG_Q12 : CLUSTER_PREFIX_MSG_Q0,
			    topic, m->topic_len, subj, sizeof(subj)) < 0) {
		cluster_fail(cl, "message on", topic, m->topic_len, NATS_OK);
		return;
	}
	struct cluster_envelope e = {
		.qos = m->qos,
		.retain = m->retain,
		.origin = cl->node_id,
		.seq = atomic_fetch_add_explicit(&cl->seq, 1, memory_order_relaxed),
		.expiry_s = left == UINT32_MAX ? 0 : left,
		.props_len = m->props_len,
	};
	size_t n = CLUSTER_ENVELOPE_HEADER + m->props_len + m->payload_len;
	uint8_t *buf = n <= INT32_MAX ? scratch_get(n) : NULL;
	if (!buf) {
		cluster_fail(cl, "message on", topic, m->topic_len, NATS_NO_MEMORY);
		return;
	}
	cluster_envelope_header(&e, buf);
	memcpy(buf + CLUSTER_ENVELOPE_HEADER, msg_payload(m) + m->payload_len,
	       m->props_len);
	memcpy(buf + CLUSTER_ENVELOPE_HEADER + m->props_len, msg_payload(m),
	       m->payload_len);
	natsStatus st = NATS_OK;
	if (js)
		js_publish(cl, subj, buf, n, e.seq, t);
	else
		st = natsConnection_Publish(cl->nc, subj, buf, (int)n);
	if (st != NATS_OK)
		cluster_fail(cl, "message on", topic, m->topic_len, st);
	else if (!js)
		atomic_fetch_add_explicit(&cl->published, 1, memory_order_relaxed);
	if (!m->retain)
		return;
	/* The stream keeps it (its last one per subject) for every node,
	 * and for nodes that start later. */
	if (cluster_subject(CLUSTER_PREFIX_RETAIN, topic, m->topic_len, subj,
			    sizeof(subj)) < 0) {
		cluster_fail(cl, "retained message on", topic, m->topic_len, NATS_OK);
		return;
	}
	st = natsConnection_Publish(cl->nc, subj, buf, (int)n);
	if (st != NATS_OK)
		cluster_fail(cl, "retained message on", topic, m->topic_len, st);
}

/* ---- sessions across nodes -------------------------------------------------- */

static bool sess_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct sess_rec *r = htab_entry(l, const struct sess_rec, link);
	return r->id_len == len && !memcmp(r->id, key, len);
}

static void sess_free_cb(struct htab_link *l)
{
	struct sess_rec *r = htab_entry(l, struct sess_rec, link);
	free(r->body);
	free(r);
}

/* Under sess_lock. */
static struct sess_rec *sess_find(struct cluster *cl, const char *id,
				  uint16_t len)
{
	return htab_entry(htab_find(&cl->sessions, hash_bytes(id, len), id, len,
				    sess_eq_cb),
			  struct sess_rec, link);
}

/* A session record (its last one per client first, then every change):
 * kept for a client that connects here next. */
static void cluster_session_cb(natsConnection *nc, natsSubscription *sub,
			       natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	char id[CLUSTER_SUBJECT_MAX];
	struct cluster_envelope e;
	int len = cluster_msg_decode(cl, nm, CLUSTER_PREFIX_SESSION ".", id, &e);
	if (len < 0)
		return;
	const uint8_t *d = e.payload;
	bool gone = e.payload_len < 12;
	struct sess_rec *r = e.payload_len >= 8 && len <= CLIENT_ID_MAX
				     ? malloc(sizeof(*r) + (size_t)len)
				     : NULL;
	uint8_t *body = r && !gone ? malloc(e.payload_len - 12 + 1) : NULL;
	if (!r || (!gone && !body)) {
		free(r);
		natsMsg_Destroy(nm);
		atomic_fetch_add(&cl->failures, 1);
		return;
	}
	r->epoch = 0;
	for (int i = 0; i < 8; i++)
		r->epoch = r->epoch << 8 | d[i];
	r->at_wall_us = e.seq;
	r->owner = e.origin;
	r->gone = gone;
	r->expiry_s = gone ? 0 : (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 |
					 (uint32_t)d[10] << 8 | d[11];
	r->body_len = gone ? 0 : e.payload_len - 12;
	if (body)
		memcpy(body, d + 12, r->body_len);
	r->body = body;
	r->id_len = (uint16_t)len;
	memcpy(r->id, id, (size_t)len);
	natsMsg_Destroy(nm);
	pthread_mutex_lock(&cl->sess_lock);
	struct sess_rec *old = sess_find(cl, id, (uint16_t)len);
	if (old && old->epoch > r->epoch) {
		/* An older owner's late record (it went offline while the
		 * client was connecting elsewhere): the newer owner's stays. */
		sess_free_cb(&r->link);
		r = NULL;
	} else if (old) {
		htab_remove(&cl->sessions, &old->link);
		sess_free_cb(&old->link);
	}
	/* An ended session stays as a tombstone, so that such a late
	 * record cannot bring it back either. */
	if (r && htab_insert(&cl->sessions, &r->link,
			     hash_bytes(id, (size_t)len)) < 0) {
		sess_free_cb(&r->link);
		atomic_fetch_add(&cl->failures, 1);
	}
	pthread_mutex_unlock(&cl->sess_lock);
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

void cluster_session_save(struct shard *s, const struct session *ss,
			  bool gone)
{
	struct cluster *cl = s->b->cluster;
	if (!atomic_load_explicit(&cl->js_sessions, memory_order_acquire) ||
	    ss->bridge)
		return;
	if (gone) {
		/* A record to clear only if some node wrote one. */
		pthread_mutex_lock(&cl->sess_lock);
		const struct sess_rec *r =
			sess_find(cl, ss->client_id, ss->client_id_len);
		bool known = r && !r->gone;
		pthread_mutex_unlock(&cl->sess_lock);
		if (!known)
			return;
	}
	size_t n = CLUSTER_ENVELOPE_HEADER + 12;
	for (const struct sub_entry *e = ss->subs; e && !gone; e = e->next)
		n += 7u + e->len;
	if (n > CLUSTER_SESSION_RECORD_MAX) {
		cluster_fail(cl, "the subscriptions of", ss->client_id,
			     ss->client_id_len, NATS_INSUFFICIENT_BUFFER);
		gone = true; /* an old record must not come back */
		n = CLUSTER_ENVELOPE_HEADER + 12;
	}
	char subj[CLUSTER_SUBJECT_MAX + 1];
	uint8_t *buf = scratch_get(n);
	if (!buf || cluster_subject(CLUSTER_PREFIX_SESSION, ss->client_id,
				    ss->client_id_len, subj, sizeof(subj)) < 0)
		return;
	struct cluster_envelope env = {.origin = cl->node_id, .seq = wall_us()};
	cluster_envelope_header(&env, buf);
	uint8_t *p = buf + CLUSTER_ENVELOPE_HEADER;
	put_be(p, ss->connect_wall_us, 8);
	p += 8;
	if (gone) {
		n = CLUSTER_ENVELOPE_HEADER + 8; /* an epoch only: no session */
	} else {
		put_be(p, ss->expiry_s, 4);
		p += 4;
		for (const struct sub_entry *e = ss->subs; e; e = e->next) {
			p[0] = e->options;
			put_be(p + 1, e->sub_id, 4);
			put_be(p + 5, e->len, 2);
			memcpy(p + 7, e->filter, e->len);
			p += 7u + e->len;
		}
	}
	natsStatus st = natsConnection_Publish(cl->nc, subj, buf, (int)n);
	if (st != NATS_OK)
		cluster_fail(cl, "the session of", ss->client_id,
			     ss->client_id_len, st);
}

bool cluster_session_restore(struct shard *s, struct session *ss)
{
	struct cluster *cl = s->b->cluster;
	if (!atomic_load_explicit(&cl->js_sessions, memory_order_acquire))
		return false;
	pthread_mutex_lock(&cl->sess_lock);
	struct sess_rec *r = sess_find(cl, ss->client_id, ss->client_id_len);
	uint8_t *body = NULL;
	uint32_t len = 0;
	bool alive = r && !r->gone && (r->expiry_s == UINT32_MAX ||
			   wall_us() < r->at_wall_us + (uint64_t)r->expiry_s * 1000000u);
	if (alive && (body = malloc(r->body_len + 1u)) != NULL) {
		len = r->body_len;
		memcpy(body, r->body, len);
	}
	pthread_mutex_unlock(&cl->sess_lock);
	if (!body)
		return false;
	/* Records come from other nodes of this cluster, still checked as
	 * bytes from the network: a bad one restores what parsed before it.
	 * The record is written once, after (not once per subscription). */
	struct conn *c = ss->conn;
	ss->conn = NULL;
	for (uint32_t off = 0; off + 7 <= len;) {
		const uint8_t *p = body + off;
		uint32_t sub_id = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 |
				  (uint32_t)p[3] << 8 | p[4];
		uint16_t flen = (uint16_t)(p[5] << 8 | p[6]);
		if (!flen || off + 7u + flen > len ||
		    !mqtt_topic_filter_valid(p + 7, flen))
			break;
		const char *f = (const char *)p + 7;
		if (session_may_subscribe(ss, f, flen))
			session_add_sub(ss, f, flen, p[0] & ~(uint32_t)(SUB_SHARED | SUB_READ_OK),
					sub_id, NULL);
		off += 7u + flen;
	}
	ss->conn = c;
	free(body);
	if (s->cfg->connection_messages)
		log_msg(KITE_LOG_NOTICE, "Client %s: session taken over from "
			"another node of the cluster, %u subscriptions",
			ss->client_id, ss->sub_count);
	return true;
}

/* ---- sessions across nodes: the hand-over of their messages ---------------
 * The node a client connects to asks the owner named by the session's
 * record (a NATS request to "kite.n.<owner>", answered on our
 * "kite.h.<us>.<req>"). The owner closes the old connection, sends the
 * session's outgoing state in order (in flight, QoS 2 received, queued),
 * in chunks under NATS's max_payload with an end marker carrying the
 * count, and forgets the session only once it is all sent. */

static const struct cluster_upcalls *cup;

void cluster_set_upcalls(const struct cluster_upcalls *up)
{
	cup = up;
}

static bool ho_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	return htab_entry(l, const struct handover, link)->req ==
	       *(const uint64_t *)key;
}

static void handover_free(struct handover *h)
{
	for (uint32_t i = 0; i < h->nmsgs; i++)
		natsMsg_Destroy(h->msgs[i]);
	free(h->msgs);
	free(h);
}

/* Under ho_lock: no longer waiting; it goes to its shard. */
static void handover_unwait(struct cluster *cl, struct handover *h)
{
	htab_remove(&cl->ho_wait, &h->link);
	if (h->prev)
		h->prev->next = h->next;
	else
		cl->ho_list = h->next;
	if (h->next)
		h->next->prev = h->prev;
}

static void handover_deliver(struct cluster *cl, struct handover *h)
{
	pthread_mutex_lock(&cl->in_lock);
	if (atomic_load(&cl->closing)) {
		handover_free(h);
	} else {
		cin_push(cl, h->shard, (struct cin_item){CIN_HANDOVER, h});
	}
	pthread_mutex_unlock(&cl->in_lock);
}

static void node_subject(char *out, size_t cap, const char *prefix,
			 uint64_t node)
{
	snprintf(out, cap, "%s.%016" PRIx64, prefix, node);
}

bool cluster_session_fetch(struct shard *s, struct conn *c,
			   struct session *ss)
{
	struct cluster *cl = s->b->cluster;
	if (!atomic_load_explicit(&cl->js_sessions, memory_order_acquire) ||
	    ss->bridge)
		return false;
	uint64_t now_us = wall_us(), owner = 0;
	pthread_mutex_lock(&cl->sess_lock);
	const struct sess_rec *r = sess_find(cl, ss->client_id, ss->client_id_len);
	if (r && !r->gone && r->owner != cl->node_id &&
	    (r->expiry_s == UINT32_MAX ||
	     now_us < r->at_wall_us + (uint64_t)r->expiry_s * 1000000u))
		owner = r->owner;
	pthread_mutex_unlock(&cl->sess_lock);
	/* No other node has it: never wait. Without a NATS link the ask
	 * would only wait in libnats's buffer: go on at once too. */
	if (!owner || natsConnection_Status(cl->nc) != NATS_CONN_STATUS_CONNECTED)
		return false;
	size_t n = 8u + ss->client_id_len;
	struct handover *h = calloc(1, sizeof(*h));
	uint8_t *buf = h ? scratch_get(n) : NULL;
	if (!buf) {
		free(h);
		return false;
	}
	h->req = atomic_fetch_add(&cl->ho_seq, 1) + 1;
	h->owner = owner;
	h->session_key = ss->id;
	h->shard = s->idx;
	h->conn_id = c->id;
	h->conn_gen = c->gen;
	h->deadline_ms = shard_clock_ms() + CLUSTER_HANDOVER_WAIT_MS;
	put_be(buf, now_us, 8);
	memcpy(buf + 8, ss->client_id, ss->client_id_len);
	char subj[64], reply[96];
	node_subject(subj, sizeof(subj), CLUSTER_PREFIX_NODE, owner);
	node_subject(reply, sizeof(reply), CLUSTER_PREFIX_HANDOVER, cl->node_id);
	snprintf(reply + strlen(reply), sizeof(reply) - strlen(reply),
		 ".%" PRIu64, h->req);
	pthread_mutex_lock(&cl->ho_lock);
	bool in = htab_insert(&cl->ho_wait, &h->link, pend_hash(h->req)) == 0;
	if (in) {
		h->next = cl->ho_list;
		if (h->next)
			h->next->prev = h;
		cl->ho_list = h;
	}
	pthread_mutex_unlock(&cl->ho_lock);
	natsStatus st = in ? natsConnection_PublishRequest(cl->nc, subj, reply,
							   buf, (int)n)
			   : NATS_NO_MEMORY;
	if (st == NATS_OK)
		return true;
	if (in) {
		pthread_mutex_lock(&cl->ho_lock);
		handover_unwait(cl, h);
		pthread_mutex_unlock(&cl->ho_lock);
	}
	free(h);
	cluster_fail(cl, "the request for the session of", ss->client_id,
		     ss->client_id_len, st);
	return false;
}

/* Delivery thread: a chunk of an answer to one of our asks, or NATS's
 * "no responders" (the owner is gone: nothing to wait for). */
static void cluster_answer_cb(natsConnection *nc, natsSubscription *sub,
			      natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	const char *subj = natsMsg_GetSubject(nm), *dot = strrchr(subj, '.');
	uint64_t req = dot ? strtoull(dot + 1, NULL, 10) : 0;
	const uint8_t *d = (const uint8_t *)natsMsg_GetData(nm);
	int len = natsMsg_GetDataLength(nm);
	pthread_mutex_lock(&cl->ho_lock);
	struct handover *h = htab_entry(htab_find(&cl->ho_wait, pend_hash(req),
						  &req, sizeof(req), ho_eq_cb),
					struct handover, link);
	uint8_t flags = 0;
	uint32_t count = 0;
	if (!h) {
		/* Past CLUSTER_HANDOVER_LATE_MS: what it brings is lost
		 * (docs). */
	} else if (natsMsg_IsNoResponders(nm)) {
		h->no_owner = h->ended = true;
	} else if (cluster_handover_chunk_parse(d, (size_t)len, &flags,
						&count) < 0) {
		atomic_fetch_add(&cl->failures, 1);
		h->cut = h->ended = true;
	} else {
		if (h->nmsgs == h->cap && !h->cut) {
			uint32_t cap = h->cap ? 2 * h->cap : 4;
			natsMsg **m = realloc(h->msgs, sizeof(*m) * cap);
			if (m) {
				h->msgs = m;
				h->cap = cap;
			}
		}
		if (h->cut || h->nmsgs == h->cap ||
		    h->bytes + (size_t)len > CLUSTER_HANDOVER_BYTES_MAX) {
			h->cut = true; /* the rest is dropped (logged) */
		} else {
			h->msgs[h->nmsgs++] = nm;
			h->bytes += (size_t)len;
			nm = NULL;
		}
		if (flags & CLUSTER_HANDOVER_END) {
			h->count = count;
			h->ended = true;
		}
	}
	if (h && h->ended)
		handover_unwait(cl, h);
	else
		h = NULL;
	pthread_mutex_unlock(&cl->ho_lock);
	natsMsg_Destroy(nm);
	if (h)
		handover_deliver(cl, h);
}

/* JetStream thread: asks not answered in time go on without. */
static void handover_tick(struct cluster *cl)
{
	uint64_t now = shard_clock_ms();
	struct handover *notices = NULL, *dropped = NULL;
	pthread_mutex_lock(&cl->ho_lock);
	for (struct handover *h = cl->ho_list, *next; h; h = next) {
		next = h->next;
		if (now < h->deadline_ms)
			continue;
		if (h->timed_out) { /* no late answer either */
			handover_unwait(cl, h);
			h->next = dropped;
			dropped = h;
			continue;
		}
		h->timed_out = true;
		h->deadline_ms = now + CLUSTER_HANDOVER_LATE_MS;
		struct handover *n = calloc(1, sizeof(*n));
		if (!n)
			continue; /* the connection waits for the late answer */
		*n = (struct handover){.req = h->req, .owner = h->owner,
				       .session_key = h->session_key,
				       .shard = h->shard, .conn_id = h->conn_id,
				       .conn_gen = h->conn_gen, .timed_out = true,
				       .notice = true, .next = notices};
		notices = n;
	}
	pthread_mutex_unlock(&cl->ho_lock);
	while (notices) {
		struct handover *h = notices;
		notices = h->next;
		handover_deliver(cl, h);
	}
	while (dropped) {
		struct handover *h = dropped;
		dropped = h->next;
		handover_free(h);
	}
}

/* Delivery thread: another node asks for a session; its home shard
 * answers (or we do at once: no such session here). */
static void handover_send_end(struct cluster *cl, const char *reply,
			      uint32_t count);

static void cluster_ask_cb(natsConnection *nc, natsSubscription *sub,
			   natsMsg *nm, void *closure)
{
	struct cluster *cl = closure;
	const char *reply = natsMsg_GetReply(nm);
	const uint8_t *d = (const uint8_t *)natsMsg_GetData(nm);
	int len = natsMsg_GetDataLength(nm);
	if (!reply || strlen(reply) >= sizeof(((struct handover_ask *)0)->reply) ||
	    len <= 8 || len - 8 > CLIENT_ID_MAX) {
		atomic_fetch_add(&cl->failures, 1);
		natsMsg_Destroy(nm);
		return;
	}
	uint16_t idlen = (uint16_t)(len - 8);
	int home = session_home(cl->b, (const char *)d + 8, idlen);
	struct handover_ask *a = home < 0 ? NULL : malloc(sizeof(*a) + idlen);
	if (!a) {
		handover_send_end(cl, reply, 0);
		natsMsg_Destroy(nm);
		return;
	}
	a->at_wall_us = 0;
	for (int i = 0; i < 8; i++)
		a->at_wall_us = a->at_wall_us << 8 | d[i];
	snprintf(a->reply, sizeof(a->reply), "%s", reply);
	a->len = idlen;
	memcpy(a->id, d + 8, idlen);
	natsMsg_Destroy(nm);
	pthread_mutex_lock(&cl->in_lock);
	if (atomic_load(&cl->closing))
		free(a);
	else
		cin_push(cl, (unsigned)home, (struct cin_item){CIN_ASK, a});
	pthread_mutex_unlock(&cl->in_lock);
}

/* An answer being written: chunks go out as they fill. */
struct handover_out {
	struct cluster *cl;
	const char *reply;
	uint8_t *buf;
	size_t len, cap, max;
	uint32_t in_chunk, count, skipped;
};

static void handover_flush(struct handover_out *o, bool end)
{
	if (!o->buf)
		return;
	cluster_handover_chunk_header(o->buf, end ? CLUSTER_HANDOVER_END : 0,
				      end ? o->count : o->in_chunk);
	natsStatus st = natsConnection_Publish(o->cl->nc, o->reply, o->buf,
					       (int)o->len);
	if (st != NATS_OK)
		cluster_fail(o->cl, "a session's messages to", o->reply,
			     strlen(o->reply), st);
	o->len = CLUSTER_HANDOVER_CHUNK_HEADER;
	o->in_chunk = 0;
}

static void handover_put(struct handover_out *o,
			 const struct cluster_handover_item *it)
{
	size_t n = cluster_handover_item_size(it);
	if (n + CLUSTER_HANDOVER_CHUNK_HEADER > o->max) {
		o->skipped++; /* larger than NATS carries: as between nodes */
		return;
	}
	if (o->len + n > o->max)
		handover_flush(o, false);
	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap : 4096;
		while (cap < o->len + n)
			cap *= 2;
		uint8_t *b = realloc(o->buf, cap);
		if (!b) {
			o->skipped++;
			return;
		}
		o->buf = b;
		o->cap = cap;
	}
	cluster_handover_item_write(it, o->buf + o->len);
	o->len += n;
	o->in_chunk++;
	o->count++;
}

static void handover_send_end(struct cluster *cl, const char *reply,
			      uint32_t count)
{
	uint8_t hdr[CLUSTER_HANDOVER_CHUNK_HEADER];
	cluster_handover_chunk_header(hdr, CLUSTER_HANDOVER_END, count);
	natsStatus st = natsConnection_Publish(cl->nc, reply, hdr, sizeof(hdr));
	if (st != NATS_OK)
		cluster_fail(cl, "a session's messages to", reply, strlen(reply), st);
}

/* An item for one message of a session (m NULL: PUBREL sent). False:
 * expired, nothing to move. */
static bool handover_item(struct cluster_handover_item *it, uint8_t kind,
			  uint8_t state, uint16_t pid, const struct deliv *d,
			  const struct msg *m, uint64_t now_ms)
{
	*it = (struct cluster_handover_item){
		.kind = kind, .state = state, .pid = pid, .dqos = d->qos,
		.dretain = d->retain,
		.nsub = d->nsub < CLUSTER_HANDOVER_SUBIDS_MAX
				? d->nsub : CLUSTER_HANDOVER_SUBIDS_MAX};
	for (unsigned i = 0; i < it->nsub; i++)
		it->sub[i] = d->sub[i];
	if (!m)
		return true;
	uint32_t left = msg_expiry_left(m, now_ms);
	if (!left)
		return false;
	it->has_msg = true;
	it->qos = m->qos;
	it->retain = m->retain;
	it->expiry_s = left == UINT32_MAX ? 0 : left;
	it->topic = (const uint8_t *)msg_topic(m);
	it->topic_len = m->topic_len;
	it->props = msg_payload(m) + m->payload_len;
	it->props_len = m->props_len;
	it->payload = msg_payload(m);
	it->payload_len = m->payload_len;
	return true;
}

/* On the session's home shard: the session goes to the asking node. */
static void handover_answer(struct shard *s, struct handover_ask *a)
{
	struct cluster *cl = s->b->cluster;
	struct session *ss = session_take_remote(s, a->id, a->len, a->at_wall_us);
	if (!ss) {
		handover_send_end(cl, a->reply, 0);
		return;
	}
	/* The session goes on there: no will, as on a local takeover of a
	 * persistent session. */
	session_detach_conn(ss, "session taken over", false);
	int64_t max = natsConnection_GetMaxPayload(cl->nc);
	struct handover_out o = {
		.cl = cl, .reply = a->reply, .len = CLUSTER_HANDOVER_CHUNK_HEADER,
		.max = max > 4096 ? (size_t)max : CLUSTER_HANDOVER_CHUNK_DEFAULT};
	struct cluster_handover_item it;
	for (uint32_t i = ss->if_head; i != ss->if_tail; i++) {
		const struct inflight *f = session_inflight_at(ss, i);
		if (f->state != INFLIGHT_DONE &&
		    handover_item(&it, HANDOVER_INFLIGHT, f->state, f->pid,
				  &f->d, f->msg, s->now_ms))
			handover_put(&o, &it);
	}
	for (uint32_t i = 0; i < ss->qos2_in_count; i++) {
		const struct deliv d = {.qos = 2};
		if (handover_item(&it, HANDOVER_QOS2_IN, 0, ss->qos2_in[i].pid,
				  &d, ss->qos2_in[i].msg, s->now_ms))
			handover_put(&o, &it);
	}
	for (uint32_t i = 0; i < ss->q_count; i++) {
		const struct queued *q = &ss->queue[(ss->q_head + i) % ss->q_cap];
		if (handover_item(&it, HANDOVER_QUEUED, 0, 0, &q->d, q->msg,
				  s->now_ms))
			handover_put(&o, &it);
	}
	if (!o.buf) {
		handover_send_end(cl, a->reply, 0);
	} else {
		handover_flush(&o, true);
		free(o.buf);
	}
	if (s->cfg->connection_messages || o.skipped)
		log_msg(o.skipped ? KITE_LOG_WARNING : KITE_LOG_NOTICE,
			"Client %s: session handed over to another node of the "
			"cluster, %u messages (%u too large for NATS, dropped)",
			ss->client_id, o.count, o.skipped);
	/* Sent (libnats has copied it): forgotten here only now. */
	session_destroy(ss);
}

/* One item into the session; false when it could not be taken. */
static bool handover_restore_item(struct shard *s, struct session *ss,
				  const struct cluster_handover_item *it,
				  bool late)
{
	struct deliv d = {.qos = it->dqos, .retain = it->dretain,
			  .nsub = it->nsub < DELIV_SUBIDS_MAX ? it->nsub
							      : DELIV_SUBIDS_MAX};
	for (unsigned i = 0; i < d.nsub; i++)
		d.sub[i] = it->sub[i];
	struct msg *m = NULL;
	if (it->has_msg) {
		m = msg_new(it->topic, it->topic_len, it->payload,
			    it->payload_len, it->qos, it->retain,
			    it->props_len ? it->props : NULL, it->props_len);
		if (!m)
			return false;
		m->expiry_s = it->expiry_s;
		m->created_ms = s->now_ms;
	}
	int rc = -1;
	/* Late, the session went on with packet ids of its own here: what
	 * was in flight there is queued again (a PUBREL left to send is
	 * dropped: the client has the message). */
	/* A session already in this node's log (a late answer) logs each
	 * message as it takes it; a new one is logged whole when accepted
	 * (persist_session). */
	if ((late && it->kind == HANDOVER_INFLIGHT) ||
	    (it->kind == HANDOVER_QUEUED && m)) {
		rc = m ? session_restore_msg(ss, m, 0, &d, 0, 0) : 0;
		if (rc == 0 && m)
			persist_queue(ss, m, &d);
	} else if (it->kind == HANDOVER_INFLIGHT && it->pid && d.qos &&
		   it->state < INFLIGHT_DONE &&
		   (m || it->state == INFLIGHT_WAIT_PUBCOMP)) {
		uint64_t mid = ss->logged && m ? persist_msg_id(s, m) : 0;
		if (mid)
			persist_queue(ss, m, &d);
		rc = session_restore_msg(ss, m, mid, &d, it->pid, it->state);
		if (rc == 0 && mid)
			persist_out(ss, mid, it->pid,
				    it->state == INFLIGHT_WAIT_PUBACK
					    ? JOURNAL_WAIT_PUBACK
				    : it->state == INFLIGHT_WAIT_PUBREC
					    ? JOURNAL_WAIT_PUBREC
					    : JOURNAL_WAIT_PUBCOMP);
	} else if (it->kind == HANDOVER_QOS2_IN && it->pid && m &&
		 !session_qos2_seen(ss, it->pid))
		rc = session_qos2_add(ss, it->pid, msg_ref(m));
	if (rc < 0 && it->kind == HANDOVER_QOS2_IN && m)
		msg_unref(m); /* the reference qos2_add did not take */
	msg_unref(m);
	return rc == 0;
}

/* On the shard of the waiting connection: the answer (or none). */
static void handover_restore(struct shard *s, struct handover *h)
{
	struct cluster *cl = s->b->cluster;
	struct session *ss = shard_session_by_id(s, h->session_key);
	uint32_t got = 0, lost = 0;
	for (uint32_t i = 0; i < h->nmsgs && ss; i++) {
		const uint8_t *d = (const uint8_t *)natsMsg_GetData(h->msgs[i]);
		size_t len = (size_t)natsMsg_GetDataLength(h->msgs[i]);
		for (size_t off = CLUSTER_HANDOVER_CHUNK_HEADER; off < len;) {
			struct cluster_handover_item it;
			long n = cluster_handover_item_parse(d + off, len - off, &it);
			if (n < 0) {
				atomic_fetch_add(&cl->failures, 1);
				break;
			}
			off += (size_t)n;
			if (handover_restore_item(s, ss, &it, h->timed_out))
				got++;
			else
				lost++;
		}
	}
	const char *id = ss ? ss->client_id : "?";
	if (h->timed_out && !h->notice) {
		log_msg(KITE_LOG_WARNING, "cluster: client %s: node %016" PRIx64
			" handed its session over late: %u of %u messages queued",
			id, h->owner, got, h->count);
		handover_free(h);
		if (ss && ss->conn && ss->conn->state == CONN_ACTIVE)
			session_pump(ss);
		return;
	}
	if (h->timed_out) {
		if ((atomic_fetch_add(&cl->ho_timeouts, 1) & 1023) == 0)
			log_msg(KITE_LOG_WARNING, "cluster: client %s: node "
				"%016" PRIx64 " did not hand its session over within "
				"%d ms; going on without its messages", id, h->owner,
				CLUSTER_HANDOVER_WAIT_MS);
	} else if (h->no_owner) {
		if (s->cfg->connection_messages)
			log_msg(KITE_LOG_NOTICE, "Client %s: the node that had "
				"its session is gone; its messages with it", id);
	} else {
		atomic_fetch_add(&cl->ho_moved, 1);
		if (h->cut || got + lost != h->count || lost)
			log_msg(KITE_LOG_WARNING, "cluster: client %s: %u of %u "
				"messages of its session taken over", id, got,
				h->count);
		else if (s->cfg->connection_messages)
			log_msg(KITE_LOG_NOTICE, "Client %s: %u messages of its "
				"session taken over from another node of the "
				"cluster", id, got);
	}
	struct conn *c = shard_conn_lookup(s, h->conn_id, h->conn_gen);
	handover_free(h);
	if (c && !(c->parked & PARK_CLUSTER))
		c = NULL;
	if (c && ss && !ss->conn && c->state == CONN_AWAIT_CONNECT) {
		cup->connect_resume(s, c, ss);
		return;
	}
	if (c) {
		/* The session went on without it (another connection of the
		 * client took it meanwhile). */
		c->parked &= (uint8_t)~PARK_CLUSTER;
		conn_close(c, "session taken over", false);
	}
	if (ss && !ss->conn) {
		/* Its connection is gone: the session waits offline, here
		 * (its record, written now, names this node). */
		cluster_session_restore(s, ss);
		ss->connect_wall_us = wall_us();
		session_on_disconnect(s, ss);
	}
}

/* ---- JetStream: retained messages ----------------------------------------- */

/* KITE_RETAINED (msgs false): the last message per subject, for ever;
 * KITE_MSGS (msgs true): every QoS 1/2 message for a short while. */
enum stream_kind { STREAM_RETAINED, STREAM_MSGS, STREAM_SESSIONS };

static natsStatus cluster_add_stream(struct cluster *cl, enum stream_kind k,
				     int64_t replicas, jsErrCode *jerr)
{
	static const char *const names[] = {"KITE_RETAINED", CLUSTER_MSGS_STREAM,
					     "KITE_SESSIONS"};
	static const char *const subjs[] = {CLUSTER_PREFIX_RETAIN ".>",
					    CLUSTER_PREFIX_MSG_Q12 ".>",
					    CLUSTER_PREFIX_SESSION ".>"};
	bool msgs = k == STREAM_MSGS;
	const char *subjects[] = {subjs[k]};
	jsStreamConfig sc;
	jsStreamConfig_Init(&sc);
	sc.Name = names[k];
	sc.Subjects = subjects;
	sc.SubjectsLen = 1;
	if (k == STREAM_SESSIONS) {
		/* A few per client: a node that starts reads them in order
		 * and the owners' epochs pick the right one (the last may be
		 * an older owner's late record). */
		sc.MaxMsgsPerSubject = 4;
	} else if (msgs) {
		sc.Retention = js_LimitsPolicy;
		sc.MaxAge = (int64_t)CLUSTER_MSGS_MAX_AGE_S * 1000000000;
		sc.MaxBytes = CLUSTER_MSGS_MAX_BYTES;
		sc.Discard = js_DiscardOld;
	} else {
		sc.MaxMsgsPerSubject = 1;
	}
	sc.Storage = js_FileStorage;
	sc.Replicas = replicas;
	jsStreamInfo *si = NULL;
	natsStatus st = js_AddStream(&si, cl->js, &sc, NULL, jerr);
	if (st != NATS_OK && *jerr == JSStreamNameExistErr)
		st = NATS_OK; /* another node made it */
	jsStreamInfo_Destroy(si);
	return st;
}

/* Three copies where the NATS cluster has three servers; one on a single
 * server. */
static natsStatus cluster_make_stream(struct cluster *cl, enum stream_kind k,
				      jsErrCode *jerr)
{
	natsStatus st = cluster_add_stream(cl, k, 3, jerr);
	if (st != NATS_OK)
		st = cluster_add_stream(cl, k, 1, jerr);
	return st;
}

static int cluster_setup_js(struct cluster *cl)
{
	if (cl->js)
		return 0;
	jsOptions jo;
	jsOptions_Init(&jo);
	/* Requests (streams, replays) are retried: after a NATS server
	 * died, JetStream answers again once it elected new leaders. */
	jo.Wait = CLUSTER_JS_REQUEST_WAIT_MS;
	jo.PublishAsync.AckHandler = cluster_js_ack_cb;
	jo.PublishAsync.AckHandlerClosure = cl;
	/* Above kite's own bound (pend_count), so libnats never stalls. */
	jo.PublishAsync.MaxPending = CLUSTER_JS_PENDING_MAX + 2 * CLUSTER_JS_RETRY_BATCH;
	/* A shard never waits: past MaxPending the publish is retried by
	 * the JetStream thread. */
	jo.PublishAsync.StallWait = 1;
	return natsConnection_JetStream(&cl->js, cl->nc, &jo) == NATS_OK ? 0 : -1;
}

/* 0: QoS 1/2 go through KITE_MSGS; 1: no JetStream (logged); -1: try
 * again. */
static int cluster_setup_msgs(struct cluster *cl)
{
	jsErrCode jerr = 0;
	natsStatus st = cluster_make_stream(cl, STREAM_MSGS, &jerr);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_WARNING, "cluster: no JetStream stream for "
			"QoS 1/2 messages (%s, %d): between nodes they are "
			"sent at most once", natsStatus_GetText(st), (int)jerr);
		return st == NATS_TIMEOUT ? -1 : 1;
	}
	atomic_store_explicit(&cl->js_msgs, true, memory_order_release);
	log_msg(KITE_LOG_NOTICE, "cluster: node %s sends QoS 1/2 messages "
		"through JetStream (stream %s)", cl->node, CLUSTER_MSGS_STREAM);
	return 0;
}

static int cluster_setup_retained(struct cluster *cl)
{
	jsErrCode jerr = 0;
	natsStatus st = cluster_make_stream(cl, STREAM_RETAINED, &jerr);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_WARNING, "cluster: no JetStream stream for "
			"retained messages (%s, %d): they stay on their node",
			natsStatus_GetText(st), (int)jerr);
		return st == NATS_TIMEOUT ? -1 : 1;
	}
	/* Persistent sessions' subscriptions: followed the same way. */
	st = cluster_make_stream(cl, STREAM_SESSIONS, &jerr);
	jsSubOptions ss;
	jsSubOptions_Init(&ss);
	ss.Stream = "KITE_SESSIONS";
	ss.Ordered = true;
	ss.Config.DeliverPolicy = js_DeliverAll;
	if (st == NATS_OK && !cl->session_sub)
		st = js_Subscribe(&cl->session_sub, cl->js,
				  CLUSTER_PREFIX_SESSION ".>", cluster_session_cb,
				  cl, NULL, &ss, &jerr);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_WARNING, "cluster: no JetStream stream for "
			"sessions (%s, %d)", natsStatus_GetText(st), (int)jerr);
		return -1;
	}
	atomic_store_explicit(&cl->js_sessions, true, memory_order_release);
	jsSubOptions so;
	jsSubOptions_Init(&so);
	so.Stream = "KITE_RETAINED";
	so.Ordered = true;
	so.Config.DeliverPolicy = js_DeliverLastPerSubject;
	st = js_Subscribe(&cl->retain_sub, cl->js, CLUSTER_PREFIX_RETAIN ".>",
			  cluster_retain_cb, cl, NULL, &so, &jerr);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_WARNING, "cluster: cannot follow retained "
			"messages: %s (%d)", natsStatus_GetText(st), (int)jerr);
		return -1;
	}
	log_msg(KITE_LOG_NOTICE, "cluster: node %s follows retained messages "
		"(JetStream stream KITE_RETAINED)", cl->node);
	return 0;
}

/* Under way or due: the stream from when the link broke (the JetStream
 * thread's turn). */
static void replay_tick(struct cluster *cl)
{
	if (cl->replay_sub &&
	    (atomic_load(&cl->replay_caught_up) ||
	     shard_clock_ms() > cl->replay_deadline_ms)) {
		natsSubscription_Unsubscribe(cl->replay_sub);
		natsSubscription_Destroy(cl->replay_sub);
		cl->replay_sub = NULL;
		log_msg(KITE_LOG_NOTICE, "cluster: node %s replayed the QoS 1/2 "
			"messages of its outage (%s; %llu so far)", cl->node,
			atomic_load(&cl->replay_caught_up) ? "complete"
							   : "stopped: too long",
			(unsigned long long)atomic_load(&cl->replayed));
	}
	uint64_t from = atomic_exchange(&cl->replay_from_us, 0);
	if (!from)
		return;
	if (cl->replay_sub) {
		/* Broke again during the replay: start over from the first
		 * break. */
		if (cl->replay_start_us < from)
			from = cl->replay_start_us;
		natsSubscription_Unsubscribe(cl->replay_sub);
		natsSubscription_Destroy(cl->replay_sub);
		cl->replay_sub = NULL;
	}
	jsErrCode jerr = 0;
	jsStreamInfo *si = NULL;
	natsStatus st = js_GetStreamInfo(&si, cl->js, CLUSTER_MSGS_STREAM, NULL,
					 &jerr);
	uint64_t last = st == NATS_OK ? si->State.LastSeq : 0;
	int64_t last_ns = st == NATS_OK ? si->State.LastTime : 0;
	jsStreamInfo_Destroy(si);
	if (st == NATS_OK && (!last || last_ns < (int64_t)from * 1000)) {
		log_msg(KITE_LOG_NOTICE, "cluster: node %s replayed the QoS 1/2 "
			"messages of its outage (complete: none stored since)",
			cl->node);
		return;
	}
	jsSubOptions so;
	jsSubOptions_Init(&so);
	so.Stream = CLUSTER_MSGS_STREAM;
	so.Ordered = true;
	so.Config.DeliverPolicy = js_DeliverByStartTime;
	so.Config.OptStartTime = (int64_t)from * 1000;
	cl->replay_end_seq = last;
	cl->replay_start_us = from;
	cl->replay_deadline_ms = shard_clock_ms() + CLUSTER_REPLAY_MAX_MS;
	atomic_store(&cl->replay_caught_up, false);
	if (st == NATS_OK)
		st = js_Subscribe(&cl->replay_sub, cl->js,
				  CLUSTER_PREFIX_MSG_Q12 ".>", cluster_replay_cb,
				  cl, NULL, &so, &jerr);
	if (st != NATS_OK) {
		cl->replay_sub = NULL;
		log_msg(KITE_LOG_WARNING, "cluster: cannot replay the QoS 1/2 "
			"messages of the outage yet: %s (%d); trying again",
			natsStatus_GetText(st), (int)jerr);
		uint64_t zero = 0;
		atomic_compare_exchange_strong(&cl->replay_from_us, &zero, from);
	}
}

/* JetStream requests wait for answers: done off the shards, once NATS is
 * reachable, retried until they work or kite stops. Then, every turn,
 * the publishes to send again and the replays. */
static void *cluster_js_main(void *arg)
{
	struct cluster *cl = arg;
	int msgs = -1, retained = -1;
	while (!atomic_load(&cl->closing)) {
		if (msgs < 0 || retained < 0) {
			if (natsConnection_Status(cl->nc) ==
				    NATS_CONN_STATUS_CONNECTED &&
			    cluster_setup_js(cl) == 0) {
				if (msgs < 0)
					msgs = cluster_setup_msgs(cl);
				if (retained < 0)
					retained = cluster_setup_retained(cl);
			}
			if (msgs < 0 || retained < 0) {
				for (int i = 0; i < 10 && !atomic_load(&cl->closing); i++) {
					handover_tick(cl);
					usleep(100 * 1000);
				}
				continue;
			}
		}
		if (msgs == 0) {
			js_retry_tick(cl);
			replay_tick(cl);
		}
		handover_tick(cl);
		usleep(CLUSTER_TICK_MS * 1000);
	}
	return NULL;
}

void cluster_announce_session(struct shard *s, const struct session *ss)
{
	struct cluster *cl = s->b->cluster;
	const char *id = ss->client_id;
	uint16_t len = ss->client_id_len;
	/* seq: when it connected, so that the other nodes close only
	 * older connections. */
	struct cluster_envelope e = {.origin = cl->node_id,
				     .seq = ss->connect_wall_us};
	uint8_t *buf = scratch_get(CLUSTER_ENVELOPE_HEADER + (size_t)len);
	if (!buf)
		return;
	cluster_envelope_header(&e, buf);
	memcpy(buf + CLUSTER_ENVELOPE_HEADER, id, len);
	natsStatus st = natsConnection_Publish(cl->nc, CLUSTER_PREFIX_TAKEOVER, buf,
					       CLUSTER_ENVELOPE_HEADER + len);
	if (st != NATS_OK)
		cluster_fail(cl, "takeover of", id, len, st);
}

/* ---- interest ------------------------------------------------------------- */

static bool interest_eq_cb(const struct htab_link *l, const void *key,
			   size_t len)
{
	const struct interest *in = htab_entry(l, const struct interest, link);
	return in->len == len && !memcmp(in->filter, key, len);
}

static void interest_subscribe(struct cluster *cl, struct interest *in)
{
	char subj[2][CLUSTER_SUBJECT_MAX + 1];
	int n = cluster_filter_subjects(CLUSTER_PREFIX_MSG_ANY, in->filter, in->len,
					subj);
	if (n < 0) {
		log_msg(KITE_LOG_WARNING, "cluster: filter '%.*s' is too long "
			"for NATS: it gets this node's messages only",
			(int)(in->len > 200 ? 200 : in->len), in->filter);
		return;
	}
	for (int i = 0; i < n; i++) {
		natsStatus st = natsConnection_Subscribe(&in->sub[i], cl->nc,
							 subj[i], cluster_msg_cb, cl);
		if (st != NATS_OK) {
			in->sub[i] = NULL;
			log_msg(KITE_LOG_ERR, "cluster: cannot subscribe to %s: %s",
				subj[i], natsStatus_GetText(st));
			continue;
		}
		/* Bursts wait in the client rather than being cut at its
		 * default 64 Ki messages. */
		natsSubscription_SetPendingLimits(in->sub[i], 1 << 20, 256 << 20);
	}
}

static void interest_free(struct interest *in)
{
	for (int i = 0; i < 2; i++)
		if (in->sub[i]) {
			natsSubscription_Unsubscribe(in->sub[i]);
			natsSubscription_Destroy(in->sub[i]);
		}
	free(in);
}

void cluster_interest(struct broker *b, const char *filter, uint16_t len,
		      bool add)
{
	struct cluster *cl = b->cluster;
	uint64_t h = hash_bytes(filter, len);
	pthread_mutex_lock(&cl->interest_lock);
	struct interest *in = htab_entry(
		htab_find(&cl->interest, h, filter, len, interest_eq_cb),
		struct interest, link);
	if (add && in) {
		in->refs++;
	} else if (add) {
		in = calloc(1, sizeof(*in) + len);
		if (in) {
			in->refs = 1;
			in->len = len;
			memcpy(in->filter, filter, len);
			if (htab_insert(&cl->interest, &in->link, h) < 0) {
				free(in);
				in = NULL;
			} else {
				interest_subscribe(cl, in);
			}
		}
		if (!in)
			log_msg(KITE_LOG_ERR, "cluster: out of memory: filter "
				"'%.*s' gets this node's messages only",
				(int)len, filter);
	} else if (in && --in->refs == 0) {
		htab_remove(&cl->interest, &in->link);
		interest_free(in);
	}
	pthread_mutex_unlock(&cl->interest_lock);
}

static bool share_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct share_sub *ss = htab_entry(l, const struct share_sub, link);
	return ss->len == len && !memcmp(ss->key, key, len);
}

static void share_sub_done_cb(void *closure)
{
	struct share_sub *ss = closure;
	if (atomic_fetch_sub(&ss->live, 1) == 1)
		free(ss);
}

static void share_queue_subscribe(struct cluster *cl, struct share_sub *ss)
{
	const char *slash = memchr(ss->key, '/', ss->len);
	if (!slash)
		return;
	size_t glen = (size_t)(slash - ss->key);
	char subj[2][CLUSTER_SUBJECT_MAX + 1], queue[CLUSTER_SUBJECT_MAX + 1];
	int n = cluster_filter_subjects(CLUSTER_PREFIX_MSG_ANY, slash + 1,
					ss->len - glen - 1, subj);
	if (n < 0 || cluster_subject("q", ss->key, glen, queue, sizeof(queue)) < 0) {
		log_msg(KITE_LOG_WARNING, "cluster: shared subscription '%.*s' "
			"is too long for NATS: it gets this node's messages "
			"only", (int)ss->len, ss->key);
		return;
	}
	for (int i = 0; i < n; i++) {
		natsStatus st = natsConnection_QueueSubscribe(
			&ss->sub[i], cl->nc_share, subj[i], queue,
			cluster_share_cb, ss);
		if (st != NATS_OK) {
			ss->sub[i] = NULL;
			log_msg(KITE_LOG_ERR, "cluster: cannot subscribe to %s "
				"in queue %s: %s", subj[i], queue,
				natsStatus_GetText(st));
			continue;
		}
		atomic_fetch_add(&ss->live, 1);
		natsSubscription_SetOnCompleteCB(ss->sub[i], share_sub_done_cb, ss);
		natsSubscription_SetPendingLimits(ss->sub[i], 1 << 20, 256 << 20);
	}
}

static void share_sub_free(struct share_sub *ss)
{
	/* Held until the last subscription's handler returned. */
	atomic_fetch_add(&ss->live, 1);
	for (int i = 0; i < 2; i++)
		if (ss->sub[i]) {
			natsSubscription_Unsubscribe(ss->sub[i]);
			natsSubscription_Destroy(ss->sub[i]);
		}
	share_sub_done_cb(ss);
}

void cluster_share(struct broker *b, const char *key, uint16_t len, bool add)
{
	struct cluster *cl = b->cluster;
	uint64_t h = hash_bytes(key, len);
	pthread_mutex_lock(&cl->interest_lock);
	struct share_sub *ss = htab_entry(
		htab_find(&cl->shares, h, key, len, share_eq_cb),
		struct share_sub, link);
	if (add && ss) {
		ss->refs++;
	} else if (add) {
		ss = calloc(1, sizeof(*ss) + len);
		if (ss) {
			ss->cl = cl;
			ss->refs = 1;
			ss->len = len;
			memcpy(ss->key, key, len);
			if (htab_insert(&cl->shares, &ss->link, h) < 0) {
				free(ss);
				ss = NULL;
			} else {
				share_queue_subscribe(cl, ss);
			}
		}
		if (!ss)
			log_msg(KITE_LOG_ERR, "cluster: out of memory: shared "
				"subscription '%.*s' left out", (int)len, key);
	} else if (ss && --ss->refs == 0) {
		htab_remove(&cl->shares, &ss->link);
		share_sub_free(ss);
	}
	pthread_mutex_unlock(&cl->interest_lock);
}

/* ---- the link -------------------------------------------------------------- */

static void cluster_disconnected_cb(natsConnection *nc, void *closure)
{
	struct cluster *cl = closure;
	if (atomic_load(&cl->closing))
		return;
	log_msg(KITE_LOG_WARNING, "cluster: node %s lost NATS; reconnecting",
		cl->node);
	/* The messages connection: what it misses from now on is replayed
	 * from KITE_MSGS once it is back. */
	uint64_t zero = 0;
	if (nc == cl->nc)
		atomic_compare_exchange_strong(&cl->down_since_us, &zero,
					       wall_us());
}


static void cluster_connected_cb(natsConnection *nc, void *closure)
{
	struct cluster *cl = closure;
	char url[256] = "";
	natsConnection_GetConnectedUrl(nc, url, sizeof(url));
	if (nc == cl->nc_share)
		log_msg(KITE_LOG_NOTICE, "cluster: node %s: shared "
			"subscriptions' link connected to NATS at %s",
			cl->node, url);
	else
		log_msg(KITE_LOG_NOTICE, "cluster: node %s connected to NATS "
			"at %s", cl->node, url);
}

static void cluster_reconnected_cb(natsConnection *nc, void *closure)
{
	struct cluster *cl = closure;
	cluster_connected_cb(nc, closure);
	uint64_t down = nc == cl->nc ? atomic_exchange(&cl->down_since_us, 0) : 0;
	if (!down || !atomic_load(&cl->js_msgs))
		return;
	uint64_t from = down - CLUSTER_REPLAY_MARGIN_MS * 1000u;
	uint64_t cur = atomic_load(&cl->replay_from_us);
	while ((!cur || from < cur) &&
	       !atomic_compare_exchange_weak(&cl->replay_from_us, &cur, from))
		;
}

static void cluster_error_cb(natsConnection *nc, natsSubscription *sub,
			     natsStatus err, void *closure)
{
	struct cluster *cl = closure;
	if ((atomic_fetch_add(&cl->failures, 1) & 1023) == 0)
		log_msg(KITE_LOG_WARNING, "cluster: NATS: %s",
			natsStatus_GetText(err));
}

static natsOptions *cluster_options(struct cluster *cl,
				    const struct kite_config *cfg, bool echo)
{
	natsOptions *o = NULL;
	natsStatus st = natsOptions_Create(&o);
	/* "url,url,...": every server the node may use. */
	char urls[sizeof(cfg->cluster_nats_url)];
	const char *servers[CLUSTER_SERVERS_MAX];
	int n = 0;
	snprintf(urls, sizeof(urls), "%s", cfg->cluster_nats_url);
	for (char *save = NULL, *u = strtok_r(urls, ",", &save);
	     u && n < CLUSTER_SERVERS_MAX; u = strtok_r(NULL, ",", &save))
		servers[n++] = u;
	if (st == NATS_OK)
		st = n ? natsOptions_SetServers(o, servers, n) : NATS_INVALID_ARG;
	if (st == NATS_OK)
		st = natsOptions_SetName(o, cl->node);
	/* What this node publishes it has routed itself (but its queue
	 * subscriptions, on a second connection, take part). */
	if (st == NATS_OK)
		st = natsOptions_SetNoEcho(o, !echo);
	if (st == NATS_OK)
		st = natsOptions_SetMaxReconnect(o, -1);
	if (st == NATS_OK)
		st = natsOptions_SetReconnectWait(o, CLUSTER_RECONNECT_WAIT_MS);
	/* One delivery thread for every subscription: the single producer
	 * of the shards' rings, in the order NATS delivered. */
	if (st == NATS_OK)
		st = natsOptions_UseGlobalMessageDelivery(o, true);
	if (st == NATS_OK)
		st = natsOptions_SetRetryOnFailedConnect(o, true,
							 cluster_connected_cb, cl);
	if (st == NATS_OK)
		st = natsOptions_SetReconnectedCB(o, cluster_reconnected_cb, cl);
	if (st == NATS_OK)
		st = natsOptions_SetDisconnectedCB(o, cluster_disconnected_cb, cl);
	if (st == NATS_OK)
		st = natsOptions_SetErrorHandler(o, cluster_error_cb, cl);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_ERR, "Error: cluster_nats_url '%s': %s",
			cfg->cluster_nats_url, natsStatus_GetText(st));
		natsOptions_Destroy(o);
		return NULL;
	}
	return o;
}

int cluster_start(struct broker *b)
{
	const struct kite_config *cfg = b->cfg;
	if (!cfg->cluster_nats_url[0])
		return 0;
	struct cluster *cl = calloc(1, sizeof(*cl));
	if (!cl)
		return -1;
	cl->b = b;
	cl->rings = aligned_alloc(64, sizeof(*cl->rings) * b->nshards);
	cl->seen = calloc(CLUSTER_SEEN_SLOTS, sizeof(*cl->seen));
	if (!cl->rings || !cl->seen ||
	    getrandom(&cl->node_id, sizeof(cl->node_id), 0) != sizeof(cl->node_id) ||
	    io_uring_queue_init(4, &cl->wake, 0) < 0) {
		log_msg(KITE_LOG_ERR, "Error: cluster: cannot start");
		free(cl->rings);
		free(cl->seen);
		free(cl);
		return -1;
	}
	for (unsigned i = 0; i < b->nshards; i++) {
		atomic_init(&cl->rings[i].head, 0);
		atomic_init(&cl->rings[i].tail, 0);
		atomic_init(&cl->rings[i].woken, false);
	}
	pthread_mutex_init(&cl->interest_lock, NULL);
	pthread_mutex_init(&cl->in_lock, NULL);
	pthread_mutex_init(&cl->pend_lock, NULL);
	pthread_mutex_init(&cl->sess_lock, NULL);
	pthread_mutex_init(&cl->ho_lock, NULL);
	if (cfg->cluster_node_name[0]) {
		snprintf(cl->node, sizeof(cl->node), "%s", cfg->cluster_node_name);
	} else {
		char host[40] = "kite";
		gethostname(host, sizeof(host) - 1);
		snprintf(cl->node, sizeof(cl->node), "%s-%d", host, (int)getpid());
	}
	b->cluster = cl;
	natsStatus st = nats_Open(-1);
	if (st == NATS_OK)
		st = nats_SetMessageDeliveryPoolSize(1);
	if (st == NATS_OK)
		cl->opts = cluster_options(cl, cfg, false);
	if (st != NATS_OK || !cl->opts) {
		log_msg(KITE_LOG_ERR, "Error: cluster: %s", natsStatus_GetText(st));
		return -1;
	}
	st = natsConnection_Connect(&cl->nc, cl->opts);
	if (st != NATS_OK && st != NATS_NOT_YET_CONNECTED) {
		log_msg(KITE_LOG_ERR, "Error: cluster: cannot use NATS at %s: %s",
			cfg->cluster_nats_url, natsStatus_GetText(st));
		return -1;
	}
	if (st == NATS_NOT_YET_CONNECTED)
		log_msg(KITE_LOG_WARNING, "cluster: NATS at %s is not reachable "
			"yet; node %s keeps trying", cfg->cluster_nats_url,
			cl->node);
	else
		cluster_connected_cb(cl->nc, cl);
	natsOptions *so = cluster_options(cl, cfg, true);
	st = so ? natsConnection_Connect(&cl->nc_share, so) : NATS_NO_MEMORY;
	if (st == NATS_NOT_YET_CONNECTED)
		st = NATS_OK;
	natsOptions_Destroy(so);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_ERR, "Error: cluster: %s", natsStatus_GetText(st));
		return -1;
	}
	st = natsConnection_Subscribe(&cl->takeover_sub, cl->nc,
				      CLUSTER_PREFIX_TAKEOVER,
				      cluster_takeover_cb, cl);
	/* Sessions handed over: asks for ours, answers to our asks. */
	char subj[96];
	node_subject(subj, sizeof(subj), CLUSTER_PREFIX_NODE, cl->node_id);
	if (st == NATS_OK)
		st = natsConnection_Subscribe(&cl->ask_sub, cl->nc, subj,
					      cluster_ask_cb, cl);
	node_subject(subj, sizeof(subj), CLUSTER_PREFIX_HANDOVER, cl->node_id);
	strcat(subj, ".*");
	if (st == NATS_OK)
		st = natsConnection_Subscribe(&cl->answer_sub, cl->nc, subj,
					      cluster_answer_cb, cl);
	if (st == NATS_OK)
		natsSubscription_SetPendingLimits(cl->answer_sub, 1 << 20,
						  1 << 30);
	if (st != NATS_OK) {
		log_msg(KITE_LOG_ERR, "Error: cluster: %s", natsStatus_GetText(st));
		return -1;
	}
	log_msg(KITE_LOG_NOTICE, "cluster: node %s, NATS %s", cl->node,
		cfg->cluster_nats_url);
	cl->setup_started =
		pthread_create(&cl->setup_thread, NULL, cluster_js_main, cl) == 0;
	return 0;
}

void cluster_stop(struct broker *b)
{
	struct cluster *cl = b->cluster;
	if (!cl)
		return;
	atomic_store(&cl->closing, true);
	if (cl->setup_started)
		pthread_join(cl->setup_thread, NULL);
	/* Published messages still buffered go out first. */
	if (cl->nc) {
		natsConnection_FlushTimeout(cl->nc, 1000);
		natsConnection_Close(cl->nc);
	}
	if (cl->nc_share)
		natsConnection_Close(cl->nc_share);
	/* A delivery in progress finishes before this returns. */
	pthread_mutex_lock(&cl->in_lock);
	pthread_mutex_unlock(&cl->in_lock);
}

static void share_free_cb(struct htab_link *l)
{
	share_sub_free(htab_entry(l, struct share_sub, link));
}

static void interest_free_cb(struct htab_link *l)
{
	interest_free(htab_entry(l, struct interest, link));
}

static void ho_free_cb(struct htab_link *l)
{
	handover_free(htab_entry(l, struct handover, link));
}

/* Stopping: a hold JetStream never answered. */
static void pend_free_cb(struct htab_link *l)
{
	struct js_pend *p = htab_entry(l, struct js_pend, link);
	natsMsg_Destroy(p->retry);
	if (p->t && atomic_fetch_sub(&p->t->pending, 1) == 1)
		persist_ticket_discard(p->t);
	free(p);
}

void cluster_free(struct broker *b)
{
	struct cluster *cl = b->cluster;
	if (!cl)
		return;
	for (unsigned i = 0; i < b->nshards; i++) {
		struct cin_ring *r = &cl->rings[i];
		for (uint32_t h = atomic_load(&r->head); h != atomic_load(&r->tail); h++) {
			struct cin_item it = r->items[h & (CLUSTER_RING_SLOTS - 1)];
			if (it.kind == CIN_MSG || it.kind == CIN_RETAIN)
				msg_unref(it.ptr);
			else if (it.kind == CIN_SHARE)
				msg_unref(((struct share_in *)it.ptr)->m);
			if (it.kind == CIN_TICKET) {
				struct persist_ticket *t = it.ptr;
				if (atomic_fetch_sub(&t->pending, 1) == 1)
					persist_ticket_discard(t);
			} else if (it.kind == CIN_HANDOVER) {
				handover_free(it.ptr);
			} else if (it.kind != CIN_MSG && it.kind != CIN_RETAIN) {
				free(it.ptr);
			}
		}
	}
	htab_fini(&cl->interest, interest_free_cb);
	htab_fini(&cl->shares, share_free_cb);
	htab_fini(&cl->pend, pend_free_cb);
	htab_fini(&cl->sessions, sess_free_cb);
	htab_fini(&cl->ho_wait, ho_free_cb);
	if (cl->ask_sub)
		natsSubscription_Destroy(cl->ask_sub);
	if (cl->answer_sub)
		natsSubscription_Destroy(cl->answer_sub);
	if (cl->takeover_sub)
		natsSubscription_Destroy(cl->takeover_sub);
	if (cl->retain_sub)
		natsSubscription_Destroy(cl->retain_sub);
	if (cl->replay_sub)
		natsSubscription_Destroy(cl->replay_sub);
	if (cl->session_sub)
		natsSubscription_Destroy(cl->session_sub);
	jsCtx_Destroy(cl->js);
	natsConnection_Destroy(cl->nc);
	natsConnection_Destroy(cl->nc_share);
	natsOptions_Destroy(cl->opts);
	nats_Close();
	io_uring_queue_exit(&cl->wake);
	free(cl->rings);
	free(cl->seen);
	free(cl);
	b->cluster = NULL;
}
