/* Shared subscriptions, $share/GROUP/FILTER (MQTT 5 4.8.2; Mosquitto also
 * serves them to 3.1.1 clients): each message goes to one member.
 *
 * A group lives on its home shard (a hash of group and filter): the member
 * list and one entry in that shard's trie under FILTER, so the global trie
 * sends matching messages there. The home picks members round robin and
 * delivers locally or forwards the message, by session id, to the shard
 * that owns the member's session. Membership changes travel to the home
 * over the same rings, so a forward that finds its member gone comes back
 * behind the member's LEAVE and is given to another member: QoS 1/2
 * messages are not lost when a member leaves. No session state crosses
 * threads. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/gtrie.h"
#include "core/trie.h"
#include "io/conn.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/session-t.h"
#include "io/shard.h"
#include "io/share.h"


/* Set once before the shards start (share_set_upcalls). */
static const struct share_upcalls *up;

void share_set_upcalls(const struct share_upcalls *u)
{
	up = u;
}

struct share_member {
	unsigned shard;
	uint64_t session_id;
	uint8_t qos;
	uint32_t sub_id;
};

struct share_group {
	struct share_group *next; /* the home shard's groups */
	char *key;		  /* "GROUP/FILTER" as subscribed, after $share/ */
	uint16_t key_len;
	uint16_t group_len;	  /* key[0..group_len) is GROUP */
	struct share_member *m;
	uint32_t n, cap, rr;
};

/* A membership change or a forwarded message (XK_SHARE_*). */
struct share_op {
	struct msg *msg;
	uint64_t session_id;
	unsigned shard;
	uint8_t qos;
	uint32_t sub_id;
	/* JOIN/LEAVE from a SUBSCRIBE/UNSUBSCRIBE whose ack waits: the
	 * home answers XK_SHARE_ACK to this connection. */
	struct held_ack *held;
	/* A forwarded message whose publisher's ack waits (one hold). */
	struct persist_ticket *ticket;
	uint32_t conn_id, conn_gen;
	uint16_t key_len;
	char key[];
};

static const char *share_filter(const struct share_group *g, uint16_t *len)
{
	*len = (uint16_t)(g->key_len - g->group_len - 1);
	return g->key + g->group_len + 1;
}

unsigned share_home(const struct broker *b, const char *key, uint16_t len)
{
	return (unsigned)(hash_bytes(key, len) % b->nshards);
}

/* "$share/GROUP/FILTER" -> key "GROUP/FILTER"; 0 if not shared. */
bool share_parse(const char *f, uint16_t len, const char **key,
		 uint16_t *key_len)
{
	if (len < 7 || memcmp(f, "$share/", 7))
		return false;
	*key = f + 7;
	*key_len = (uint16_t)(len - 7);
	return true;
}

static struct share_group *share_find(struct shard *s, const char *key,
				      uint16_t len, struct share_group ***link)
{
	struct share_group **pp = &s->share_groups;
	for (; *pp; pp = &(*pp)->next)
		if ((*pp)->key_len == len && !memcmp((*pp)->key, key, len))
			break;
	if (link)
		*link = pp;
	return *pp;
}

static struct share_group *share_group_new(struct shard *s, const char *key,
					   uint16_t len)
{
	const char *slash = memchr(key, '/', len);
	assert(slash); /* the codec validated $share/GROUP/FILTER */
	struct share_group *g = calloc(1, sizeof(*g));
	if (!g || !(g->key = malloc(len))) {
		free(g);
		return NULL;
	}
	memcpy(g->key, key, len);
	g->key_len = len;
	g->group_len = (uint16_t)(slash - key);
	uint16_t flen;
	const char *f = share_filter(g, &flen);
	struct trie_sub sub = {.owner = g, .options = SUB_SHARED};
	enum trie_result r = trie_subscribe(s->trie, f, flen, &sub);
	if (r < 0 || (r == TRIE_ADDED_FIRST &&
		      gtrie_add(s->b->gtrie, f, flen, s->idx) < 0)) {
		if (r >= 0)
			trie_unsubscribe(s->trie, f, flen, g);
		free(g->key);
		free(g);
		return NULL;
	}
	g->next = s->share_groups;
	s->share_groups = g;
	if (s->b->cluster)
		up->cluster_share(s->b, g->key, g->key_len, true);
	return g;
}

static void share_group_drop(struct shard *s, struct share_group *g,
			     struct share_group **link)
{
	uint16_t flen;
	const char *f = share_filter(g, &flen);
	if (trie_unsubscribe(s->trie, f, flen, g) == TRIE_REMOVED_LAST)
		gtrie_remove(s->b->gtrie, f, flen, s->idx);
	if (s->b->cluster)
		up->cluster_share(s->b, g->key, g->key_len, false);
	*link = g->next;
	free(g->m);
	free(g->key);
	free(g);
}

static void share_join(struct shard *s, const struct share_op *op)
{
	struct share_group **link;
	struct share_group *g = share_find(s, op->key, op->key_len, &link);
	if (!g && !(g = share_group_new(s, op->key, op->key_len)))
		return;
	for (uint32_t i = 0; i < g->n; i++) {
		if (g->m[i].session_id == op->session_id) {
			g->m[i].qos = op->qos; /* resubscribe */
			g->m[i].sub_id = op->sub_id;
			return;
		}
	}
	if (g->n == g->cap) {
		uint32_t ncap = g->cap ? g->cap * 2 : 4;
		struct share_member *n = realloc(g->m, sizeof(*n) * ncap);
		if (!n)
			return;
		g->m = n;
		g->cap = ncap;
	}
	g->m[g->n++] = (struct share_member){op->shard, op->session_id,
					     op->qos, op->sub_id};
}

static void share_leave(struct shard *s, const struct share_op *op)
{
	struct share_group **link;
	struct share_group *g = share_find(s, op->key, op->key_len, &link);
	if (!g)
		return;
	for (uint32_t i = 0; i < g->n; i++) {
		if (g->m[i].session_id == op->session_id) {
			g->m[i] = g->m[--g->n];
			break;
		}
	}
	if (!g->n)
		share_group_drop(s, g, link);
}

static struct share_op *share_op_new(const char *key, uint16_t len)
{
	struct share_op *op = calloc(1, sizeof(*op) + len);
	if (op) {
		memcpy(op->key, key, len);
		op->key_len = len;
	}
	return op;
}

/* Runs op on the group's home shard: here at once, or over the ring (then
 * a held ack, if any, waits for the home's confirmation). Returns true
 * when it went over the ring. */
static bool share_post(struct shard *s, struct share_op *op, uint8_t kind,
		       struct session *ss, struct held_ack *held)
{
	if (s->stopping) {
		/* Shutdown: every shard frees its own groups (and the
		 * others may have exited already). */
		free(op);
		return false;
	}
	unsigned home = share_home(s->b, op->key, op->key_len);
	if (home == s->idx) {
		share_on_item(s, kind, op);
		return false;
	}
	if (held && ss->conn) {
		op->held = held;
		op->conn_id = ss->conn->id;
		op->conn_gen = ss->conn->gen;
		conn_held_ack_expect(held);
	}
	shard_post(s, home, (struct xitem){kind, op});
	return op->held != NULL;
}

static struct share_op *share_member_op(struct session *ss, const char *key,
					uint16_t len)
{
	struct share_op *op = share_op_new(key, len);
	if (op) {
		op->shard = ss->shard->idx;
		op->session_id = ss->id;
	}
	return op;
}

bool share_subscribe(struct session *ss, const char *key, uint16_t len,
		     uint8_t qos, uint32_t sub_id, struct held_ack *held)
{
	struct share_op *op = share_member_op(ss, key, len);
	if (!op)
		return false;
	op->qos = qos;
	op->sub_id = sub_id;
	return share_post(ss->shard, op, XK_SHARE_JOIN, ss, held);
}

bool share_unsubscribe(struct session *ss, const char *key, uint16_t len,
		       struct held_ack *held)
{
	struct share_op *op = share_member_op(ss, key, len);
	if (!op)
		return false;
	return share_post(ss->shard, op, XK_SHARE_LEAVE, ss, held);
}

/* On the home shard: the change is in, tell the member's connection. */
static bool share_confirm(struct shard *s, struct share_op *op)
{
	if (!op->held)
		return false;
	shard_post(s, op->shard, (struct xitem){XK_SHARE_ACK, op});
	return true;
}

/* On the home shard: the next member gets the message. */
static void share_dispatch(struct shard *s, struct share_group *g,
			   struct msg *m, struct persist_ticket *t)
{
	if (!g->n)
		return;
	struct share_member *mb = &g->m[g->rr++ % g->n];
	struct share_op *op = share_op_new(g->key, g->key_len);
	if (!op)
		return;
	op->msg = msg_ref(m);
	if (t) {
		persist_ticket_hold(t);
		op->ticket = t;
	}
	op->session_id = mb->session_id;
	op->shard = s->idx;
	op->qos = mb->qos < m->qos || s->cfg->upgrade_outgoing_qos ? mb->qos
								    : m->qos;
	op->sub_id = mb->sub_id;
	if (mb->shard == s->idx)
		share_on_item(s, XK_SHARE_DELIVER, op);
	else
		shard_post(s, mb->shard, (struct xitem){XK_SHARE_DELIVER, op});
}

void share_route(struct shard *s, void *group, struct msg *m,
		 struct persist_ticket *t)
{
	share_dispatch(s, group, m, t);
}

/* Whether the session still holds $share/KEY: after its UNSUBACK nothing
 * more may come through it, even if the home shard has not yet seen the
 * LEAVE that is on its way. */
static bool share_still_member(const struct session *ss,
			       const struct share_op *op)
{
	for (const struct sub_entry *e = ss->subs; e; e = e->next)
		if (e->len == op->key_len + 7u && !memcmp(e->filter, "$share/", 7) &&
		    !memcmp(e->filter + 7, op->key, op->key_len))
			return true;
	return false;
}

/* On the member's shard: deliver, or send it back to be re-given. */
static void share_deliver(struct shard *s, struct share_op *op)
{
	struct session *ss = shard_session_by_id(s, op->session_id);
	if (ss && !share_still_member(ss, op))
		ss = NULL;
	if (ss && up->session_may(ss, msg_topic(op->msg), op->msg->topic_len,
			      ACL_READ)) {
		struct deliv d = {.qos = op->qos, .nsub = op->sub_id ? 1 : 0,
				  .sub = {op->sub_id}};
		up->session_deliver(ss, op->msg, &d);
	} else if (!ss && op->qos > 0 && !s->stopping) {
		/* The member left; its LEAVE is ahead of this on the ring. */
		unsigned home = share_home(s->b, op->key, op->key_len);
		struct share_op *back = op;
		op = NULL;
		if (home == s->idx)
			share_on_item(s, XK_SHARE_RETRY, back);
		else
			shard_post(s, home, (struct xitem){XK_SHARE_RETRY, back});
		return;
	}
	if (op->ticket)
		persist_ticket_settle(s, op->ticket);
	msg_unref(op->msg);
	free(op);
}

void share_on_item(struct shard *s, uint8_t kind, void *ptr)
{
	struct share_op *op = ptr;
	struct share_group *g;
	switch (kind) {
	case XK_SHARE_JOIN:
		share_join(s, op);
		if (share_confirm(s, op))
			return;
		break;
	case XK_SHARE_LEAVE:
		share_leave(s, op);
		if (share_confirm(s, op))
			return;
		break;
	case XK_SHARE_ACK: {
		struct conn *c = shard_conn_lookup(s, op->conn_id, op->conn_gen);
		if (c && c->state != CONN_CLOSING)
			conn_release_ack(c, op->held);
		break;
	}
	case XK_SHARE_DELIVER:
		share_deliver(s, op);
		return; /* it owns op */
	case XK_SHARE_RETRY:
		g = share_find(s, op->key, op->key_len, NULL);
		if (g)
			share_dispatch(s, g, op->msg, op->ticket);
		if (op->ticket)
			persist_ticket_settle(s, op->ticket);
		msg_unref(op->msg);
		break;
	}
	free(op);
}

/* Shutdown: an op that no shard will run any more. */
void share_op_discard(void *ptr)
{
	struct share_op *op = ptr;
	if (op->ticket &&
	    atomic_fetch_sub(&op->ticket->pending, 1) == 1)
		persist_ticket_discard(op->ticket);
	msg_unref(op->msg);
	free(op);
}

/* Shutdown: the groups of this home shard. */
void share_free_all(struct shard *s)
{
	while (s->share_groups)
		share_group_drop(s, s->share_groups, &s->share_groups);
}

void share_route_remote(struct shard *s, const char *key, uint16_t len,
			struct msg *m)
{
	struct share_group *g = s->share_groups;
	while (g && (g->key_len != len || memcmp(g->key, key, len)))
		g = g->next;
	/* Gone meanwhile: NATS chose this node while the group was
	 * leaving it; the message is not delivered (docs/CLUSTER.md). */
	if (g)
		share_route(s, g, m, NULL);
	msg_unref(m);
}
