/* Routing a message: retained store, then the global trie names the shards
 * with subscribers, each gets one reference over its ring, and every shard
 * fans out to its own sessions from its local trie. */
#include <assert.h>
#include <stdlib.h>

#include "io/engine.h"

bool route_publish(struct shard *s, struct msg *m)
{
	struct broker *b = s->b;
	const char *topic = msg_topic(m);
	if (m->retain && m->payload_len) {
		/* Refused (deeper than TRIE_LEVELS_MAX): the reference stays ours. */
		if (retain_set(b->retained, topic, m->topic_len, msg_ref(m)) < 0)
			msg_unref(m);
	} else if (m->retain) {
		retain_set(b->retained, topic, m->topic_len, NULL);
	}
	uint64_t mask = gtrie_match(b->gtrie, topic, m->topic_len);
	uint64_t others = mask & ~(1ull << s->idx);
	while (others) {
		unsigned d = (unsigned)__builtin_ctzll(others);
		others &= others - 1;
		shard_post(s, d, (struct xitem){XK_DELIVER, msg_ref(m)});
	}
	if (mask & (1ull << s->idx))
		route_local(s, m);
	msg_unref(m);
	return mask != 0;
}

/* Shared-subscription groups a message matched on their home shard. */
#define COLLECT_GROUPS_MAX 64

struct collect {
	struct shard *s;
	const struct msg *m;
	struct delivery *d;
	uint32_t len, cap;
	bool failed;
	void *groups[COLLECT_GROUPS_MAX];
	uint32_t ngroups;
};

static void deliv_merge(struct deliv *d, const struct trie_sub *sub,
			const struct msg *m)
{
	uint8_t qos = (uint8_t)(sub->options & SUB_QOS_MASK);
	if (qos > d->qos)
		d->qos = qos;
	if ((sub->options & SUB_RETAIN_AS_PUBLISHED) && m->retain)
		d->retain = true;
	if (sub->sub_id && d->nsub < DELIV_SUBIDS_MAX)
		d->sub[d->nsub++] = sub->sub_id;
}

/* One delivery per session: overlapping subscriptions merge into the
 * highest granted QoS (spec 3.3.5) and carry every subscription id. */
static void route_collect_cb(void *ctx, const struct trie_sub *sub)
{
	struct collect *col = ctx;
	if (sub->options & SUB_SHARED) {
		if (col->ngroups < COLLECT_GROUPS_MAX)
			col->groups[col->ngroups++] = sub->owner;
		return;
	}
	struct session *ss = sub->owner;
	if ((sub->options & SUB_NO_LOCAL) && ss->id == col->m->origin)
		return;
	/* Read access, per message per subscriber: a subscription to '#'
	 * must not leak what this identity may not read. Checked once per
	 * session (overlapping subscriptions merge below). */
	if (ss->match_gen != col->s->match_gen &&
	    !session_may(ss, msg_topic(col->m), col->m->topic_len, ACL_READ))
		return;
	if (ss->match_gen == col->s->match_gen) {
		deliv_merge(&col->d[ss->match_slot].d, sub, col->m);
		return;
	}
	if (col->len == col->cap) {
		uint32_t ncap = col->cap ? col->cap * 2 : 64;
		struct delivery *n = realloc(col->d, sizeof(*n) * ncap);
		if (!n) {
			col->failed = true;
			return;
		}
		col->d = n;
		col->cap = ncap;
	}
	ss->match_gen = col->s->match_gen;
	ss->match_slot = col->len;
	struct delivery *d = &col->d[col->len++];
	d->ss = ss;
	d->d = (struct deliv){0};
	deliv_merge(&d->d, sub, col->m);
}

void route_local(struct shard *s, struct msg *m)
{
	/* Borrow the shard's scratch array; a will published while this
	 * loop closes a connection re-enters with a fresh one. */
	struct collect col = {.s = s, .m = m, .d = s->scratch,
			      .cap = s->scratch_cap};
	s->scratch = NULL;
	s->scratch_cap = 0;
	if (++s->match_gen == 0)
		s->match_gen = 1;
	trie_match(s->trie, msg_topic(m), m->topic_len, route_collect_cb, &col);
	for (uint32_t i = 0; i < col.len; i++) {
		struct deliv *d = &col.d[i].d;
		if (d->qos > m->qos)
			d->qos = m->qos;
		session_deliver(col.d[i].ss, m, d);
	}
	for (uint32_t i = 0; i < col.ngroups; i++)
		share_route(s, col.groups[i], m);
	if (s->scratch_cap < col.cap) {
		free(s->scratch);
		s->scratch = col.d;
		s->scratch_cap = col.cap;
	} else {
		free(col.d);
	}
}

struct retained_batch {
	struct msg **m;
	uint32_t len, cap;
};

static void route_retained_cb(void *ctx, void *msg)
{
	struct retained_batch *rb = ctx;
	if (rb->len == rb->cap) {
		uint32_t ncap = rb->cap ? rb->cap * 2 : 16;
		struct msg **n = realloc(rb->m, sizeof(*n) * ncap);
		if (!n)
			return;
		rb->m = n;
		rb->cap = ncap;
	}
	rb->m[rb->len++] = msg_ref(msg);
}

void route_retained(struct shard *s, struct session *ss, const char *filter,
		    uint16_t len, uint8_t granted_qos, uint32_t sub_id)
{
	struct retained_batch rb = {0};
	retain_match(s->b->retained, filter, len, route_retained_cb, &rb);
	for (uint32_t i = 0; i < rb.len; i++) {
		struct deliv d = {
			.qos = rb.m[i]->qos < granted_qos ? rb.m[i]->qos : granted_qos,
			.retain = true, /* sent because of a new subscription */
			.nsub = sub_id ? 1 : 0,
			.sub = {sub_id},
		};
		if (ss->conn && session_may(ss, msg_topic(rb.m[i]),
					    rb.m[i]->topic_len, ACL_READ))
			session_deliver(ss, rb.m[i], &d);
		msg_unref(rb.m[i]);
	}
	free(rb.m);
}
