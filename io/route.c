/* Routing a message: retained store, then the global trie names the shards
 * with subscribers, each gets one reference over its ring, and every shard
 * fans out to its own sessions from its local trie. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

#include "core/gtrie.h"
#include "core/retain.h"
#include "core/trie.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/security.h"
#include "io/session.h"
#include "io/shard.h"
#include "io/share.h"


/* Set once before the shards start (route_set_upcalls). */
static const struct route_upcalls *up;

void route_set_upcalls(const struct route_upcalls *u)
{
	up = u;
}

bool route_publish_t(struct shard *s, struct msg *m, struct persist_ticket *t)
{
	struct broker *b = s->b;
	const char *topic = msg_topic(m);
	if (b->cluster)
		up->cluster_publish(s, m, t);
	if (m->retain && m->payload_len) {
		/* Refused (deeper than TRIE_LEVELS_MAX): the reference stays ours. */
		if (retain_set(b->retained, topic, m->topic_len, msg_ref(m)) < 0)
			msg_unref(m);
		else
			persist_retained(s, m, t);
	} else if (m->retain) {
		retain_set(b->retained, topic, m->topic_len, NULL);
		persist_retained(s, m, t);
	}
	uint64_t mask = gtrie_match(b->gtrie, topic, m->topic_len);
	uint64_t others = mask & ~(1ull << s->idx);
	while (others) {
		unsigned d = (unsigned)__builtin_ctzll(others);
		others &= others - 1;
		if (t) {
			/* The other shard logs what it queues for persistent
			 * sessions and lets go of the ticket once it is
			 * durable (the message rides on the ticket). */
			persist_ticket_hold(t);
			msg_ref(t->msg);
			shard_post(s, d, (struct xitem){XK_DELIVER_T, t});
		} else {
			shard_post(s, d, (struct xitem){XK_DELIVER, msg_ref(m)});
		}
	}
	if (mask & (1ull << s->idx))
		route_local(s, m, t);
	msg_unref(m);
	return mask != 0;
}

void route_remote(struct shard *s, struct msg *m)
{
	uint64_t mask = gtrie_match(s->b->gtrie, msg_topic(m), m->topic_len);
	uint64_t others = mask & ~(1ull << s->idx);
	while (others) {
		unsigned d = (unsigned)__builtin_ctzll(others);
		others &= others - 1;
		shard_post(s, d, (struct xitem){XK_DELIVER, msg_ref(m)});
	}
	if (mask & (1ull << s->idx))
		route_local(s, m, NULL);
	msg_unref(m);
}

bool route_publish(struct shard *s, struct msg *m)
{
	return route_publish_t(s, m, NULL);
}

struct collect {
	struct shard *s;
	const struct msg *m;
	struct delivery *d;
	uint32_t len, cap;
	uint32_t lost; /* deliveries left out: no memory to list them */
	/* Shared-subscription groups the message matched on their home
	 * shard: a few inline, more on the heap. */
	void **groups;
	uint32_t ngroups, groups_cap;
	void *groups_inline[16];
};

static struct delivery *collect_push(struct collect *col)
{
	if (col->len == col->cap) {
		uint32_t ncap = col->cap ? col->cap * 2 : 64;
		struct delivery *n = realloc(col->d, sizeof(*n) * ncap);
		if (!n)
			return NULL;
		col->d = n;
		col->cap = ncap;
	}
	return &col->d[col->len++];
}

static void collect_group(struct collect *col, void *group)
{
	if (col->ngroups == col->groups_cap) {
		uint32_t ncap = col->groups_cap * 2;
		void **n = col->groups == col->groups_inline
				   ? malloc(sizeof(*n) * ncap)
				   : realloc(col->groups, sizeof(*n) * ncap);
		if (!n) {
			col->lost++;
			return;
		}
		if (col->groups == col->groups_inline)
			memcpy(n, col->groups_inline, sizeof(col->groups_inline));
		col->groups = n;
		col->groups_cap = ncap;
	}
	col->groups[col->ngroups++] = group;
}

/* A delivery of m to ss for this subscription: a new one, or merged
 * into the session's. A delivery carries DELIV_SUBIDS_MAX subscription
 * ids; a session matching more subscriptions with ids gets another copy
 * for the rest (MQTT 5 3.3.4 allows copies, each with its ids). */
static void collect_session(struct collect *col, struct session *ss,
			    const struct trie_sub *sub)
{
	uint8_t qos = (uint8_t)(sub->options & SUB_QOS_MASK);
	bool rap = (sub->options & SUB_RETAIN_AS_PUBLISHED) && col->m->retain;
	if (ss->match_gen == col->s->match_gen) {
		struct deliv *d = &col->d[ss->match_slot].d;
		if (!sub->sub_id || d->nsub < DELIV_SUBIDS_MAX) {
			if (qos > d->qos)
				d->qos = qos;
			d->retain |= rap;
			if (sub->sub_id)
				d->sub[d->nsub++] = sub->sub_id;
			return;
		}
	}
	struct delivery *slot = collect_push(col);
	if (!slot) {
		col->lost++;
		return;
	}
	ss->match_gen = col->s->match_gen;
	ss->match_slot = (uint32_t)(slot - col->d);
	slot->ss = ss;
	slot->d = (struct deliv){.qos = qos, .retain = rap};
	if (sub->sub_id)
		slot->d.sub[slot->d.nsub++] = sub->sub_id;
}

/* One delivery per session: overlapping subscriptions merge into the
 * highest granted QoS (spec 3.3.5) and carry every subscription id. */
static void route_collect_cb(void *ctx, const struct trie_sub *sub)
{
	struct collect *col = ctx;
	if (sub->options & SUB_SHARED) {
		/* In a cluster, NATS picks the node (queue groups):
		 * share_route_remote. */
		if (!col->s->b->cluster)
			collect_group(col, sub->owner);
		return;
	}
	struct session *ss = sub->owner;
	if ((sub->options & SUB_NO_LOCAL) && ss->id == col->m->origin)
		return;
	/* Read access, per message per subscriber: a subscription to '#'
	 * must not leak what this identity may not read. Checked once per
	 * session (overlapping subscriptions merge). */
	if (ss->match_gen != col->s->match_gen && !(sub->options & SUB_READ_OK) &&
	    !session_may(ss, msg_topic(col->m), col->m->topic_len, ACL_READ))
		return;
	collect_session(col, ss, sub);
}

void route_local(struct shard *s, struct msg *m, struct persist_ticket *t)
{
	/* Borrow the shard's scratch array; nothing re-enters routing while
	 * it is out (wills wait for conn_settle). */
	assert(!s->in_fanout);
	s->in_fanout = true;
	struct collect col = {.s = s, .m = m, .d = s->scratch,
			      .cap = s->scratch_cap, .groups_cap = 16};
	col.groups = col.groups_inline;
	s->scratch = NULL;
	s->scratch_cap = 0;
	if (++s->match_gen == 0)
		s->match_gen = 1;
	trie_match(s->trie, msg_topic(m), m->topic_len, route_collect_cb, &col);
	bool upgrade = s->cfg->upgrade_outgoing_qos;
	/* A delivery takes a reference for the wire queue, and a QoS 1/2
	 * one another for the inflight window or the session's queue: all
	 * in one add (m is the caller's until this returns). */
	if (col.len > 1)
		msg_bank_open(m, col.len * (m->qos ? 2u : 1u));
	for (uint32_t i = 0; i < col.len; i++) {
		struct deliv *d = &col.d[i].d;
		if (d->qos > m->qos && !upgrade)
			d->qos = m->qos;
		session_deliver(col.d[i].ss, m, d);
	}
	if (col.len > 1)
		msg_bank_close();
	for (uint32_t i = 0; i < col.ngroups; i++)
		share_route(s, col.groups[i], m, t);
	if (col.lost) {
		shard_stats_drop(s, DROP_NO_MEMORY, col.lost);
		log_msg(KITE_LOG_ERR, "Out of memory routing a message on '%.*s': "
			"%u deliveries dropped", (int)m->topic_len, msg_topic(m),
			col.lost);
	}
	if (col.groups != col.groups_inline)
		free(col.groups);
	if (s->scratch_cap < col.cap) {
		free(s->scratch);
		s->scratch = col.d;
		s->scratch_cap = col.cap;
	} else {
		free(col.d);
	}
	s->in_fanout = false;
}

struct retained_batch {
	struct msg **m;
	uint32_t len, cap;
	uint32_t lost;
};

static void route_retained_cb(void *ctx, void *msg)
{
	struct retained_batch *rb = ctx;
	if (rb->len == rb->cap) {
		uint32_t ncap = rb->cap ? rb->cap * 2 : 16;
		struct msg **n = realloc(rb->m, sizeof(*n) * ncap);
		if (!n) {
			rb->lost++;
			return;
		}
		rb->m = n;
		rb->cap = ncap;
	}
	rb->m[rb->len++] = msg_ref(msg);
}

void route_retained(struct shard *s, struct session *ss, const char *filter,
		    uint16_t len, uint8_t granted_qos, uint32_t sub_id)
{
	struct retained_batch rb = {0};
	const struct kite_config *cfg = s->cfg;
	retain_match(s->b->retained, filter, len, route_retained_cb, &rb);
	for (uint32_t i = 0; i < rb.len; i++) {
		struct msg *m = rb.m[i];
		if (cfg->check_retain_source && !security_source_may_write(s, m)) {
			msg_unref(m);
			continue;
		}
		struct deliv d = {
			.qos = m->qos < granted_qos && !cfg->upgrade_outgoing_qos
				       ? m->qos : granted_qos,
			.retain = true, /* sent because of a new subscription */
			.nsub = sub_id ? 1 : 0,
			.sub = {sub_id},
		};
		/* A bridge's local session subscribes at start, before its
		 * remote is connected: what is retained then is queued for
		 * the remote, as Mosquitto does. */
		if ((ss->conn || ss->bridge) &&
		    session_may(ss, msg_topic(rb.m[i]), rb.m[i]->topic_len,
				ACL_READ))
			session_deliver(ss, rb.m[i], &d);
		msg_unref(rb.m[i]);
	}
	free(rb.m);
	if (rb.lost) {
		shard_stats_drop(s, DROP_NO_MEMORY, rb.lost);
		log_msg(KITE_LOG_ERR, "Out of memory sending retained messages "
			"to %s: %u dropped", ss->client_id, rb.lost);
	}
}
