/* Session state: subscriptions, the outgoing inflight window, the queue
 * behind it (and for offline persistent sessions), incoming QoS 2 ids;
 * the client-id registry and takeover; the session's access checks.
 * Owned by one shard; every durable change goes through the functions
 * declared in session.h, which record it in the shard's log (persist.h). */
#include <assert.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "core/journal.h"
#include "core/log.h"
#include "core/gtrie.h"
#include "core/trie.h"
#include "io/conn.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/security.h"
#include "io/session.h"
#include "io/shard.h"
#include "io/share.h"


/* Set once before the shards start (session_set_upcalls). */
static const struct session_upcalls *up;

void session_set_upcalls(const struct session_upcalls *u)
{
	up = u;
}

/* Publishes a pending delayed will now (session end or its time). */
static void session_fire_will(struct session *ss);
/* Whether the session may read every topic the (unshared) filter
 * matches: SUB_READ_OK. */
static bool session_may_read_all(struct session *ss, const char *filter,
				 size_t len);

static struct session *session_new(struct shard *s, uint64_t key,
				   const uint8_t *id, uint16_t len,
				   uint32_t expiry_s)
{
	struct session *ss = calloc(1, sizeof(*ss));
	if (!ss)
		return NULL;
	ss->client_id = malloc((size_t)len + 1);
	if (!ss->client_id) {
		free(ss);
		return NULL;
	}
	memcpy(ss->client_id, id, len);
	ss->client_id[len] = 0;
	ss->client_id_len = len;
	ss->expiry_s = expiry_s;
	ss->persistent = expiry_s != 0;
	ss->id = key;
	ss->shard = s;
	if (shard_session_index(s, ss) < 0) {
		free(ss->client_id);
		free(ss);
		return NULL;
	}
	ss->next = s->sessions;
	if (s->sessions)
		s->sessions->prev = ss;
	s->sessions = ss;
	stat_add(&s->stats.sessions, 1);
	return ss;
}

struct session *session_create(struct shard *s, const uint8_t *id,
			       uint16_t len, uint32_t expiry_s)
{
	uint64_t key = atomic_fetch_add(&s->b->next_session_id, 1) + 1;
	return session_new(s, key, id, len, expiry_s);
}

struct session *session_revive(struct shard *s, uint64_t key, const char *id,
			       uint16_t len, uint32_t expiry_s)
{
	assert(key && atomic_load(&s->b->next_session_id) >= key);
	return session_new(s, key, (const uint8_t *)id, len, expiry_s);
}

/* Lets go of every queued message (the queue's array stays). */
static void session_queue_release(struct session *ss)
{
	for (uint32_t i = 0; i < ss->q_count; i++)
		msg_unref(ss->queue[(ss->q_head + i) % ss->q_cap].msg);
	stat_sub(&ss->shard->stats.queued, ss->q_count);
}

void session_destroy(struct session *ss)
{
	struct shard *s = ss->shard;
	assert(!ss->conn);
	if (ss->pump_deferred)
		s->pumps_deferred--;
	conn_forget_ending(ss);
	persist_session_end(ss); /* its other records are void with it */
	/* A will still waiting for its delay goes out when the session ends
	 * (MQTT 5 3.1.3.2.2: whichever comes first). */
	session_fire_will(ss);
	while (ss->subs)
		session_remove_sub(ss, ss->subs->filter, ss->subs->len, NULL);
	for (uint32_t i = ss->if_head; i != ss->if_tail; i++)
		if (session_inflight_at(ss, i)->state != INFLIGHT_DONE)
			msg_unref(session_inflight_at(ss, i)->msg);
	session_queue_release(ss);
	for (uint32_t i = 0; i < ss->qos2_in_count; i++)
		msg_unref(ss->qos2_in[i].msg);
	stat_sub(&s->stats.inflight, ss->inflight_count);
	free(ss->inflight);
	free(ss->if_index);
	free(ss->queue);
	free(ss->qos2_in);
	shard_session_unindex(s, ss);
	if (ss->prev)
		ss->prev->next = ss->next;
	else
		s->sessions = ss->next;
	if (ss->next)
		ss->next->prev = ss->prev;
	stat_sub(&s->stats.sessions, 1);
	if (ss->acl)
		acl_identity_unref(ss->acl);
	free(ss->username);
	free(ss->client_id);
	free(ss);
}

/* ---- subscriptions -------------------------------------------------------- */

/* A connected persistent session's subscriptions changed: other nodes
 * of a cluster learn them (not while it is restored, before CONNACK). */
static void session_cluster_save(struct session *ss)
{
	struct shard *s = ss->shard;
	if (s->b->cluster && ss->persistent && ss->conn)
		up->cluster_session_save(s, ss, false);
}

int session_add_sub(struct session *ss, const char *filter, uint16_t len,
		    uint32_t options, uint32_t sub_id, struct held_ack *held)
{
	struct shard *s = ss->shard;
	const char *key;
	uint16_t klen;
	enum trie_result r = TRIE_ADDED;
	if (share_parse(filter, len, &key, &klen)) {
		/* Its group's home shard holds the trie entry. */
		share_subscribe(ss, key, klen, (uint8_t)(options & SUB_QOS_MASK),
				sub_id, held);
		for (struct sub_entry *e = ss->subs; e; e = e->next)
			if (e->len == len && !memcmp(e->filter, filter, len))
				r = TRIE_REPLACED;
	} else {
		struct trie_sub sub = {
			.owner = ss,
			.options = options | (session_may_read_all(ss, filter, len)
						      ? SUB_READ_OK : 0),
			.sub_id = sub_id};
		r = trie_subscribe(s->trie, filter, len, &sub);
		if (r < 0)
			return -1;
		if (r == TRIE_ADDED_FIRST &&
		    gtrie_add(s->b->gtrie, filter, len, s->idx) < 0) {
			trie_unsubscribe(s->trie, filter, len, ss);
			return -1;
		}
		/* The node's interest counts ordinary subscribers only: a
		 * shared group on the same filter (its own trie entry) gets
		 * its messages through a NATS queue group. */
		if ((r == TRIE_ADDED_FIRST || r == TRIE_ADDED) && s->b->cluster &&
		    trie_plain_count(s->trie, filter, len) == 1)
			up->cluster_interest(s->b, filter, len, true);
	}
	persist_sub(ss, filter, len, options, sub_id);
	if (r == TRIE_REPLACED) {
		for (struct sub_entry *e = ss->subs; e; e = e->next)
			if (e->len == len && !memcmp(e->filter, filter, len)) {
				e->qos = (uint8_t)(options & SUB_QOS_MASK);
				e->options = (uint8_t)options;
				e->sub_id = sub_id;
			}
		session_cluster_save(ss);
		return 0;
	}
	struct sub_entry *e = malloc(sizeof(*e) + len + 1u);
	if (!e) {
		session_remove_sub(ss, filter, len, NULL);
		return -1;
	}
	e->qos = (uint8_t)(options & SUB_QOS_MASK);
	e->options = (uint8_t)options;
	e->sub_id = sub_id;
	e->len = len;
	memcpy(e->filter, filter, len);
	e->filter[len] = 0;
	e->next = ss->subs;
	ss->subs = e;
	ss->sub_count++;
	stat_add(&s->stats.subscriptions, 1);
	session_cluster_save(ss);
	return 1;
}

int session_remove_sub(struct session *ss, const char *filter, uint16_t len,
		       struct held_ack *held)
{
	struct shard *s = ss->shard;
	const char *key;
	uint16_t klen;
	if (share_parse(filter, len, &key, &klen)) {
		share_unsubscribe(ss, key, klen, held);
	} else {
		enum trie_result r = trie_unsubscribe(s->trie, filter, len, ss);
		if (r == TRIE_REMOVED_LAST)
			gtrie_remove(s->b->gtrie, filter, len, s->idx);
		if ((r == TRIE_REMOVED_LAST || r == TRIE_REMOVED) &&
		    s->b->cluster && trie_plain_count(s->trie, filter, len) == 0)
			up->cluster_interest(s->b, filter, len, false);
	}
	for (struct sub_entry **pp = &ss->subs; *pp; pp = &(*pp)->next) {
		struct sub_entry *e = *pp;
		if (e->len == len && !memcmp(e->filter, filter, len)) {
			persist_unsub(ss, filter, len);
			*pp = e->next;
			free(e);
			ss->sub_count--;
			stat_sub(&s->stats.subscriptions, 1);
			session_cluster_save(ss);
			return 1;
		}
	}
	return 0;
}

void session_recheck_reads(struct session *ss)
{
	const char *key;
	uint16_t klen;
	for (struct sub_entry *e = ss->subs; e; e = e->next) {
		if (share_parse(e->filter, e->len, &key, &klen))
			continue; /* groups check each delivery (share.c) */
		struct trie_sub sub = {
			.owner = ss,
			.options = e->options |
				   (session_may_read_all(ss, e->filter, e->len)
					    ? SUB_READ_OK : 0),
			.sub_id = e->sub_id};
		/* Replaces the existing entry: no allocation, cannot fail. */
		trie_subscribe(ss->shard->trie, e->filter, e->len, &sub);
	}
}

/* ---- outgoing QoS 1/2 ------------------------------------------------------ */

static bool session_online(const struct session *ss)
{
	return ss->conn && ss->conn->state == CONN_ACTIVE;
}

/* max_inflight_messages, and for MQTT 5 the client's receive maximum;
 * max_inflight_bytes (a message larger than it still goes alone). */
static bool session_window_open(const struct session *ss)
{
	uint32_t max_bytes = ss->shard->cfg->max_inflight_bytes;
	if (max_bytes && ss->inflight_bytes >= max_bytes)
		return false;
	uint32_t max = ss->shard->cfg->max_inflight_messages;
	if (ss->conn && ss->conn->v5 && (!max || ss->conn->v5->receive_max < max))
		max = ss->conn->v5->receive_max;
	return !max || ss->inflight_count < max;
}

/* ---- the window's packet-id index ---------------------------------------- */

static uint32_t if_index_mask(const struct session *ss)
{
	return ss->inflight_cap * 2 - 1;
}

/* A packet id's first cell. Not the id itself: ids handed out in
 * sequence would fill one run of cells, and deleting from the front of
 * a run (the oldest entry: the usual ack) scans all of it. Fibonacci
 * hashing scatters them, keeping runs short at half load. */
static uint32_t if_home(const struct session *ss, uint16_t pid)
{
	unsigned bits = (unsigned)__builtin_ctz(ss->inflight_cap * 2);
	return (uint32_t)(pid * 2654435769u) >> (32 - bits);
}

static uint32_t *if_index_cell(struct session *ss, uint16_t pid)
{
	uint32_t mask = if_index_mask(ss);
	for (uint32_t h = if_home(ss, pid);; h = (h + 1) & mask) {
		uint32_t v = ss->if_index[h];
		if (!v || ss->inflight[v - 1].pid == pid)
			return &ss->if_index[h];
	}
}

static void if_index_delete(struct session *ss, uint32_t *cell)
{
	/* Backward shift: later entries of the run move up so that every
	 * lookup still finds its entry before an empty cell. */
	uint32_t mask = if_index_mask(ss);
	uint32_t hole = (uint32_t)(cell - ss->if_index);
	for (uint32_t h = (hole + 1) & mask; ss->if_index[h]; h = (h + 1) & mask) {
		uint32_t want = if_home(ss, ss->inflight[ss->if_index[h] - 1].pid);
		/* Movable unless its home lies cyclically in (hole, h]. */
		if (((h - want) & mask) >= ((h - hole) & mask)) {
			ss->if_index[hole] = ss->if_index[h];
			hole = h;
		}
	}
	ss->if_index[hole] = 0;
}

static struct inflight *session_inflight_find(struct session *ss, uint16_t pid)
{
	if (!ss->inflight_count)
		return NULL;
	uint32_t v = *if_index_cell(ss, pid);
	return v ? &ss->inflight[v - 1] : NULL;
}

/* Room for one more entry at the tail: the live entries move to the
 * front of a ring of ncap slots (ncap may be the current size when holes
 * are squeezed out) and the index is rebuilt; each move is paid for by
 * the adds since the last one. */
static int session_inflight_reserve(struct session *ss)
{
	uint32_t span = ss->if_tail - ss->if_head;
	if (ss->inflight_cap && span < ss->inflight_cap)
		return 0;
	uint32_t ncap = ss->inflight_cap ? ss->inflight_cap : 4;
	if (ss->inflight_count >= ncap / 2)
		ncap *= 2;
	struct inflight *n = malloc(sizeof(*n) * ncap);
	uint32_t *idx = calloc((size_t)ncap * 2, sizeof(*idx));
	if (!n || !idx) {
		free(n);
		free(idx);
		return -1;
	}
	uint32_t live = 0;
	for (uint32_t i = ss->if_head; i != ss->if_tail; i++) {
		struct inflight *f = session_inflight_at(ss, i);
		if (f->state != INFLIGHT_DONE)
			n[live++] = *f;
	}
	assert(live == ss->inflight_count);
	free(ss->inflight);
	free(ss->if_index);
	ss->inflight = n;
	ss->if_index = idx;
	ss->inflight_cap = ncap;
	ss->if_head = 0;
	ss->if_tail = live;
	for (uint32_t i = 0; i < live; i++)
		*if_index_cell(ss, n[i].pid) = i + 1;
	return 0;
}

static struct inflight *session_inflight_push(struct session *ss, uint16_t pid)
{
	if (session_inflight_reserve(ss) < 0)
		return NULL;
	uint32_t slot = ss->if_tail++ & (ss->inflight_cap - 1);
	struct inflight *f = &ss->inflight[slot];
	f->pid = pid;
	uint32_t *cell = if_index_cell(ss, pid);
	assert(!*cell);
	*cell = slot + 1;
	ss->inflight_count++;
	stat_add(&ss->shard->stats.inflight, 1);
	return f;
}

uint16_t session_next_pid(struct session *ss)
{
	/* At most 65535 ids can be in flight; the window is far smaller. */
	for (;;) {
		if (++ss->next_pid == 0)
			ss->next_pid = 1;
		if (!session_inflight_find(ss, ss->next_pid))
			return ss->next_pid;
	}
}

static int session_queue_push(struct session *ss, struct msg *m,
			      const struct deliv *d);

/* queued: m's QUEUE record is in the log already; else it was not logged
 * yet and one SENT record says both. */
static int session_inflight_add(struct session *ss, struct msg *m,
				const struct deliv *d, uint16_t pid, bool queued)
{
	struct inflight *f = session_inflight_push(ss, pid);
	if (!f)
		return -1;
	*f = (struct inflight){
		.msg = msg_ref(m),
		.pid = pid,
		.state = d->qos == 1 ? INFLIGHT_WAIT_PUBACK : INFLIGHT_WAIT_PUBREC,
		.d = *d,
		.bytes = m->payload_len,
	};
	ss->inflight_bytes += m->payload_len;
	if (ss->logged) {
		f->msg_id = persist_msg_id(ss->shard, m);
		if (!queued)
			persist_sent(ss, m, d, pid);
		else
			persist_out(ss, f->msg_id, pid,
				    d->qos == 1 ? JOURNAL_WAIT_PUBACK
						: JOURNAL_WAIT_PUBREC);
	}
	return 0;
}

int session_restore_msg(struct session *ss, struct msg *m, uint64_t msg_id,
			const struct deliv *d, uint16_t pid, uint8_t state)
{
	if (!pid)
		return session_queue_push(ss, m, d);
	if (session_inflight_find(ss, pid))
		return -1; /* a log naming one id twice */
	struct inflight *f = session_inflight_push(ss, pid);
	if (!f)
		return -1;
	*f = (struct inflight){
		.msg = m ? msg_ref(m) : NULL,
		.msg_id = msg_id,
		.pid = pid,
		.state = state,
		.d = *d,
		.bytes = m ? m->payload_len : 0,
	};
	ss->inflight_bytes += m ? m->payload_len : 0;
	return 0;
}

static void session_inflight_remove(struct session *ss, struct inflight *f)
{
	if (ss->logged)
		persist_done(ss, f->msg_id);
	msg_unref(f->msg);
	f->msg = NULL;
	ss->inflight_bytes -= f->bytes;
	if_index_delete(ss, if_index_cell(ss, f->pid));
	f->state = INFLIGHT_DONE;
	ss->inflight_count--;
	stat_sub(&ss->shard->stats.inflight, 1);
	/* In-order acks (the usual case) just move the head. */
	while (ss->if_head != ss->if_tail &&
	       session_inflight_at(ss, ss->if_head)->state == INFLIGHT_DONE)
		ss->if_head++;
}

/* A message that cannot go to this client (expired, over its maximum
 * packet size) is dropped here. One from the queue is checked against
 * the ACL again (reloaded by SIGHUP since, or a new username: read
 * access may be gone) and, dropped, still uses up its packet id: Mosquitto
 * numbers a message when it queues it. One sent at once does not. */
static void session_send_new(struct session *ss, struct msg *m,
			     const struct deliv *d, bool queued)
{
	uint16_t before = ss->next_pid;
	uint16_t pid = session_next_pid(ss);
	if ((queued && !session_may(ss, msg_topic(m), m->topic_len, ACL_READ)) ||
	    !conn_queue_publish(ss->conn, m, d, false, pid)) {
		if (!queued)
			ss->next_pid = before;
		shard_stats_drop(ss->shard, DROP_UNDELIVERABLE, 1);
		/* One sent at once was not logged: nothing to undo. */
		if (ss->logged && queued)
			persist_done(ss, persist_msg_id(ss->shard, m));
		return;
	}
	if (session_inflight_add(ss, m, d, pid, queued) < 0) {
		/* Kept for the restart, as when it was queued. */
		if (!queued)
			persist_queue(ss, m, d);
		conn_close(ss->conn, "out of memory", false);
	} else if (d->qos == 2 && ss->logged)
		persist_gate(ss->conn); /* its packet id is durable first */
}

/* A QoS 2 delivery of a message whose release is not durable yet. */
static bool session_held(const struct msg *m, const struct deliv *d)
{
	return d->qos == 2 && atomic_load_explicit(&m->q2_held,
						   memory_order_acquire);
}

static int session_queue_push(struct session *ss, struct msg *m,
			      const struct deliv *d)
{
	const struct kite_config *cfg = ss->shard->cfg;
	if (cfg->max_queued_messages && ss->q_count >= cfg->max_queued_messages)
		return -1;
	if (cfg->max_queued_bytes &&
	    ss->q_bytes + m->payload_len > cfg->max_queued_bytes)
		return -1;
	if (ss->q_count == ss->q_cap) {
		uint32_t ncap = ss->q_cap ? ss->q_cap * 2 : 8;
		struct queued *n = malloc(sizeof(*n) * ncap);
		if (!n)
			return -1;
		for (uint32_t i = 0; i < ss->q_count; i++)
			n[i] = ss->queue[(ss->q_head + i) % ss->q_cap];
		free(ss->queue);
		ss->queue = n;
		ss->q_head = 0;
		ss->q_cap = ncap;
	}
	ss->queue[(ss->q_head + ss->q_count) % ss->q_cap] =
		(struct queued){.msg = msg_ref(m), .d = *d};
	ss->q_count++;
	ss->q_bytes += m->payload_len;
	stat_add(&ss->shard->stats.queued, 1);
	return 0;
}

void session_deliver(struct session *ss, struct msg *m, const struct deliv *d)
{
	if (ss->bridge)
		up->bridge_deliver(ss, m, d); /* maps the topic, then comes back */
	else
		session_deliver_as_is(ss, m, d);
}

void session_deliver_as_is(struct session *ss, struct msg *m,
			   const struct deliv *d)
{
	assert(d->qos <= 2);
	struct shard *s = ss->shard;
	stat_add(&s->stats.deliveries, 1);
	if (d->qos == 0) {
		/* Kept for an offline persistent session only with
		 * queue_qos0_messages (Mosquitto's option), in memory. */
		if (!session_online(ss) && ss->persistent &&
		    s->cfg->queue_qos0_messages) {
			if (session_queue_push(ss, m, d) < 0)
				shard_stats_drop(s, DROP_QUEUE_FULL, 1);
			return;
		}
		if (!session_online(ss))
			shard_stats_drop(s, DROP_OFFLINE, 1);
		else if (!conn_queue_publish(ss->conn, m, d, false, 0))
			shard_stats_drop(s, ss->conn->flags & CONN_DROPPING
					      ? DROP_QUEUE_FULL
					      : DROP_UNDELIVERABLE, 1);
		return;
	}
	if (session_online(ss) && !ss->q_count && session_window_open(ss) &&
	    !session_held(m, d)) {
		session_send_new(ss, m, d, false); /* logs it if it goes */
		return;
	}
	if (!ss->persistent && !session_online(ss))
		return;
	if (session_queue_push(ss, m, d) < 0)
		shard_stats_drop(s, DROP_QUEUE_FULL, 1);
	else
		persist_queue(ss, m, d);
	if (session_held(m, d) && ss->q_count == 1)
		persist_wait_release(ss);
}

static void session_defer_pump(struct session *ss)
{
	if (!ss->pump_deferred) {
		ss->pump_deferred = true;
		ss->shard->pumps_deferred++;
	}
}

void session_drop_queue(struct session *ss)
{
	assert(!ss->logged); /* a clean local session: nothing on disk */
	session_queue_release(ss);
	shard_stats_drop(ss->shard, DROP_OFFLINE, ss->q_count);
	ss->q_count = ss->q_head = 0;
	ss->q_bytes = 0;
}

void session_pump(struct session *ss)
{
	if (ss->q_count && shard_reload_pending(ss->shard)) {
		/* SIGHUP came: what waited in the queue goes out under the
		 * ACL being loaded, which may revoke it (as Mosquitto, whose
		 * single loop reloads before serving anyone). */
		session_defer_pump(ss);
		return;
	}
	while (ss->q_count && session_online(ss) && session_window_open(ss)) {
		struct queued q = ss->queue[ss->q_head];
		if (session_held(q.msg, &q.d)) {
			persist_wait_release(ss); /* in order: nothing overtakes */
			break;
		}
		ss->q_head = (ss->q_head + 1) % ss->q_cap;
		ss->q_count--;
		stat_sub(&ss->shard->stats.queued, 1);
		ss->q_bytes -= q.msg->payload_len;
		if (q.d.qos == 0) /* queue_qos0_messages */
			conn_queue_publish(ss->conn, q.msg, &q.d, false, 0);
		else
			session_send_new(ss, q.msg, &q.d, true);
		msg_unref(q.msg);
	}
}

void session_pump_deferred(struct shard *s)
{
	if (!s->pumps_deferred || shard_reload_pending(s))
		return;
	for (struct session *ss = s->sessions; ss && s->pumps_deferred;
	     ss = ss->next) {
		if (!ss->pump_deferred)
			continue;
		ss->pump_deferred = false;
		s->pumps_deferred--;
		if (session_online(ss))
			session_pump(ss);
	}
}

static void session_send_pubrel(struct session *ss, uint16_t pid)
{
	uint8_t buf[8];
	size_t n = mqtt_encode_ack(buf, sizeof(buf), MQTT_PUBREL,
				   ss->conn->version, pid, 0, NULL);
	assert(n);
	/* After PUBREL the client may forget the message: our WAIT_PUBCOMP
	 * must be durable first, or a restart would send it again. */
	persist_ack(ss->conn, buf, n);
}

void session_resume(struct session *ss)
{
	assert(session_online(ss));
	for (uint32_t i = ss->if_head; i != ss->if_tail; i++) {
		struct inflight *f = session_inflight_at(ss, i);
		if (f->state == INFLIGHT_DONE)
			continue;
		if (f->state == INFLIGHT_WAIT_PUBCOMP)
			session_send_pubrel(ss, f->pid);
		else
			conn_queue_publish(ss->conn, f->msg, &f->d, true, f->pid);
	}
	/* A client reconnecting the moment SIGHUP is sent may be served
	 * before the main thread wakes to reload: ask the kernel (one
	 * syscall, on reconnects with a queue only). The tick or the
	 * reload pumps it. */
	if (ss->q_count && shard_reload_coming(ss->shard)) {
		session_defer_pump(ss);
		return;
	}
	session_pump(ss);
}

enum ack_result session_on_puback(struct session *ss, uint16_t pid)
{
	struct inflight *f = session_inflight_find(ss, pid);
	if (!f)
		return ACK_UNKNOWN;
	if (f->state != INFLIGHT_WAIT_PUBACK)
		return ACK_WRONG;
	session_inflight_remove(ss, f);
	session_pump(ss);
	return ACK_DONE;
}

enum ack_result session_on_pubrec(struct session *ss, uint16_t pid,
				  uint8_t reason)
{
	struct inflight *f = session_inflight_find(ss, pid);
	if (!f)
		return ACK_UNKNOWN;
	if (f->state == INFLIGHT_WAIT_PUBACK)
		return ACK_WRONG;
	if (reason >= 0x80) {
		/* MQTT 5 4.3.3: the receiver refused it; the flow ends. */
		session_inflight_remove(ss, f);
		session_pump(ss);
		return ACK_DONE;
	}
	if (f->state == INFLIGHT_WAIT_PUBREC) {
		f->state = INFLIGHT_WAIT_PUBCOMP;
		msg_unref(f->msg);
		f->msg = NULL;
		if (ss->logged)
			persist_out(ss, f->msg_id, pid, JOURNAL_WAIT_PUBCOMP);
	}
	session_send_pubrel(ss, pid);
	return ACK_DONE;
}

enum ack_result session_on_pubcomp(struct session *ss, uint16_t pid)
{
	struct inflight *f = session_inflight_find(ss, pid);
	if (!f)
		return ACK_UNKNOWN;
	if (f->state != INFLIGHT_WAIT_PUBCOMP)
		return ACK_WRONG;
	session_inflight_remove(ss, f);
	session_pump(ss);
	return ACK_DONE;
}

/* ---- timers ---------------------------------------------------------------- */

static void session_fire_will(struct session *ss)
{
	struct will *w = ss->delayed_will;
	if (!w)
		return;
	ss->delayed_will = NULL;
	persist_will(ss);
	if (ss->shard->stopping) {
		msg_unref(w->msg); /* shutdown: the other shards are gone */
	} else {
		/* A will's Message Expiry Interval runs from its publication. */
		w->msg->created_ms = ss->shard->now_ms;
		up->route_publish(ss->shard, w->msg); /* the reference goes */
	}
	free(w);
}

void session_cancel_will(struct session *ss)
{
	if (!ss->delayed_will)
		return;
	msg_unref(ss->delayed_will->msg);
	free(ss->delayed_will);
	ss->delayed_will = NULL;
	persist_will(ss);
}

void session_timer_at(struct shard *s, uint64_t at_ms)
{
	if (!s->next_session_deadline_ms || at_ms < s->next_session_deadline_ms)
		s->next_session_deadline_ms = at_ms;
}

void session_check_timers(struct shard *s)
{
	if (!s->next_session_deadline_ms || s->now_ms < s->next_session_deadline_ms)
		return;
	s->next_session_deadline_ms = 0;
	struct session *next;
	for (struct session *ss = s->sessions; ss; ss = next) {
		next = ss->next;
		if (ss->delayed_will && s->now_ms >= ss->will_at_ms)
			session_fire_will(ss);
		else if (ss->delayed_will)
			session_timer_at(s, ss->will_at_ms);
		if (!ss->conn && ss->expire_at_ms && s->now_ms >= ss->expire_at_ms) {
			ss->expire_at_ms = 0;
			ss->expiry_s = 0;
			ss->persistent = false;
			if (s->b->cluster)
				up->cluster_session_save(s, ss, true);
			session_on_disconnect(s, ss); /* ends it */
		} else if (!ss->conn && ss->expire_at_ms) {
			session_timer_at(s, ss->expire_at_ms);
		}
	}
}

/* ---- incoming QoS 2 --------------------------------------------------------- */

bool session_qos2_seen(struct session *ss, uint16_t pid)
{
	for (uint32_t i = 0; i < ss->qos2_in_count; i++)
		if (ss->qos2_in[i].pid == pid)
			return true;
	return false;
}

int session_qos2_add(struct session *ss, uint16_t pid, struct msg *m)
{
	assert(!session_qos2_seen(ss, pid));
	if (ss->qos2_in_count == ss->qos2_in_cap) {
		uint32_t ncap = ss->qos2_in_cap ? ss->qos2_in_cap * 2 : 4;
		if (ncap > 65536)
			return -1;
		struct qos2_in *n = realloc(ss->qos2_in, sizeof(*n) * ncap);
		if (!n)
			return -1;
		ss->qos2_in = n;
		ss->qos2_in_cap = ncap;
	}
	ss->qos2_in[ss->qos2_in_count++] = (struct qos2_in){m, pid};
	persist_qos2_in(ss, pid, m);
	return 0;
}

struct msg *session_qos2_release(struct session *ss, uint16_t pid)
{
	for (uint32_t i = 0; i < ss->qos2_in_count; i++) {
		if (ss->qos2_in[i].pid == pid) {
			struct msg *m = ss->qos2_in[i].msg;
			ss->qos2_in[i] = ss->qos2_in[--ss->qos2_in_count];
			return m;
		}
	}
	return NULL;
}

/* ---- the client-id registry and takeover (across shards) ---------------- */

static bool reg_eq_cb(const struct htab_link *l, const void *id, size_t len)
{
	const struct client_entry *e =
		htab_entry(l, const struct client_entry, link);
	return e->len == len && !memcmp(e->id, id, len);
}

/* Under reg_lock; h is hash_bytes(id, len), taken before the lock so a
 * long client id does not hold it. */
struct client_entry *session_reg_find(struct broker *b, uint64_t h,
				      const char *id, uint16_t len)
{
	return htab_entry(htab_find(&b->reg, h, id, len, reg_eq_cb),
			  struct client_entry, link);
}

struct client_entry *session_reg_insert(struct broker *b, uint64_t h,
					const char *id, uint16_t len)
{
	assert(!session_reg_find(b, h, id, len));
	struct client_entry *e = calloc(1, sizeof(*e) + len);
	if (!e)
		return NULL;
	memcpy(e->id, id, len);
	e->len = len;
	if (htab_insert(&b->reg, &e->link, h) < 0) {
		free(e);
		return NULL;
	}
	return e;
}

void session_on_disconnect(struct shard *s, struct session *ss)
{
	if (ss->bridge)
		return; /* lives as long as the broker, queueing */
	if (!ss->persistent && ss->delayed_will) {
		/* Session expiry 0 with a will delay: Mosquitto keeps the
		 * client for the delay (a reconnect cancels the will), though
		 * MQTT 5 3.1.3.2.2 would end the session and send it now. Only
		 * the will is kept: no subscription, no message. */
		while (ss->subs)
			session_remove_sub(ss, ss->subs->filter, ss->subs->len,
					   NULL);
		ss->expire_at_ms = ss->will_at_ms;
		session_timer_at(s, ss->expire_at_ms);
		return;
	}
	if (ss->persistent) {
		/* Kept offline: for its expiry (MQTT 5), or for ever (3.1.1)
		 * unless persistent_client_expiration says otherwise. */
		uint64_t span_s = ss->expiry_s != UINT32_MAX
					  ? ss->expiry_s
					  : s->cfg->persistent_client_expiration_s;
		if (span_s) {
			ss->expire_at_ms = s->now_ms + span_s * 1000u;
			session_timer_at(s, ss->expire_at_ms);
		}
		persist_session(ss); /* offline since now */
		/* Its expiry counts from this record on other nodes. */
		if (s->b->cluster)
			up->cluster_session_save(s, ss, false);
		return;
	}
	struct broker *b = s->b;
	uint64_t h = hash_bytes(ss->client_id, ss->client_id_len);
	pthread_mutex_lock(&b->reg_lock);
	struct client_entry *e =
		session_reg_find(b, h, ss->client_id, ss->client_id_len);
	bool ours = e && e->session == ss;
	if (ours)
		htab_remove(&b->reg, &e->link);
	pthread_mutex_unlock(&b->reg_lock);
	if (ours) {
		free(e);
		session_destroy(ss);
	} else {
		ss->zombie = true; /* its kick is on the way */
	}
}

/* ---- takeover ------------------------------------------------------------- */

/* Takes a session's connection away for a new one. The old connection's
 * will is published only when the session ends with it (either side
 * clean: session_ends), as Mosquitto 2.0 does; resuming the session is "a
 * new Network Connection before the Will Delay Interval has elapsed"
 * (MQTT 5 3.1.2.5), and so is any reconnect for a delayed will. */
void session_detach_conn(struct session *ss, const char *why,
			 bool session_ends)
{
	session_cancel_will(ss);
	struct conn *old = ss->conn;
	if (!old)
		return;
	old->session = NULL;
	ss->conn = NULL;
	if (old->will && (!session_ends || old->will->delay_s)) {
		msg_unref(old->will->msg);
		free(old->will);
		old->will = NULL;
	}
	if (old->shard->cfg->connection_messages)
		log_msg(KITE_LOG_NOTICE,
			"Client %s already connected, closing old connection.",
			ss->client_id);
	conn_protocol_error(old, MQTT_RC_SESSION_TAKEN_OVER, why);
}

int session_register(struct broker *b, struct session *ss)
{
	uint64_t h = hash_bytes(ss->client_id, ss->client_id_len);
	pthread_mutex_lock(&b->reg_lock);
	struct client_entry *e = session_reg_find(b, h, ss->client_id, ss->client_id_len);
	if (!e)
		e = session_reg_insert(b, h, ss->client_id, ss->client_id_len);
	if (e) {
		e->session = ss;
		e->shard = ss->shard->idx;
		e->persistent = ss->persistent;
	}
	pthread_mutex_unlock(&b->reg_lock);
	return e ? 0 : -1;
}

int session_home(struct broker *b, const char *id, uint16_t len)
{
	uint64_t h = hash_bytes(id, len);
	pthread_mutex_lock(&b->reg_lock);
	struct client_entry *e = session_reg_find(b, h, id, len);
	int home = e ? (int)e->shard : -1;
	pthread_mutex_unlock(&b->reg_lock);
	return home;
}

struct session *session_take_remote(struct shard *s, const char *id,
				    uint16_t len, uint64_t at_wall_us)
{
	struct broker *b = s->b;
	uint64_t h = hash_bytes(id, len);
	pthread_mutex_lock(&b->reg_lock);
	struct client_entry *e = session_reg_find(b, h, id, len);
	/* Moved to another shard meanwhile (a local takeover): the client
	 * connected here again, after the other node's CONNECT; it stays. */
	struct session *ss = e && e->shard == s->idx ? e->session : NULL;
	/* The client connected here after it did there: this one stays. */
	if (ss && !ss->bridge && ss->connect_wall_us < at_wall_us)
		htab_remove(&b->reg, &e->link);
	else
		ss = NULL;
	pthread_mutex_unlock(&b->reg_lock);
	if (!ss)
		return NULL;
	free(e);
	if (s->cfg->connection_messages && ss->conn)
		log_msg(KITE_LOG_NOTICE, "Client %s connected to another node "
			"of the cluster, closing its connection here.",
			ss->client_id);
	return ss;
}

void session_kick_remote(struct shard *s, const char *id, uint16_t len,
			 uint64_t at_wall_us)
{
	struct session *ss = session_take_remote(s, id, len, at_wall_us);
	if (ss)
		session_kick(s, ss);
}

void session_kick(struct shard *s, struct session *ss)
{
	assert(ss->shard == s);
	session_detach_conn(ss, "session taken over", true);
	session_destroy(ss);
}

/* ---- access control for the session's identity -------------------------- */

/* The session's compiled rules under the shard's current snapshot; NULL
 * when its listener has no ACL (everything allowed). */
const struct acl_identity *session_acl(struct session *ss)
{
	const struct security *sec = ss->shard->sec;
	if (ss->acl_gen == sec->gen)
		return ss->acl;
	if (ss->acl)
		acl_identity_unref(ss->acl);
	ss->acl = NULL;
	ss->acl_gen = sec->gen;
	if (ss->listener < sec->count && sec->acl[ss->listener])
		ss->acl = acl_cache_get(sec->acl[ss->listener], ss->username,
					ss->client_id);
	return ss->acl;
}

bool session_may(struct session *ss, const char *topic, size_t len,
		 enum acl_access access)
{
	if (ss->bridge) /* configured by the operator, as in Mosquitto */
		return true;
	if (access == ACL_WRITE && security_publish_reserved(topic, len))
		return false;
	const struct acl_identity *id = session_acl(ss);
	if (!id) {
		const struct security *sec = ss->shard->sec;
		/* An ACL file that failed to compile for this identity
		 * (out of memory) denies rather than opens everything. */
		return !(ss->listener < sec->count && sec->acl[ss->listener]);
	}
	return acl_check(id, topic, len, access);
}

/* kite refuses a filter no read grant of this identity can ever match,
 * so a misconfigured device learns it at SUBSCRIBE (Mosquitto grants it
 * and then delivers nothing). */
bool session_may_subscribe(struct session *ss, const char *filter, size_t len)
{
	const struct acl_identity *id = session_acl(ss);
	if (!id) {
		const struct security *sec = ss->shard->sec;
		return !(ss->listener < sec->count && sec->acl[ss->listener]);
	}
	return acl_filter_may_match(id, filter, len);
}

static bool session_may_read_all(struct session *ss, const char *filter,
				 size_t len)
{
	if (ss->bridge)
		return true;
	const struct acl_identity *id = session_acl(ss);
	if (!id) {
		const struct security *sec = ss->shard->sec;
		return !(ss->listener < sec->count && sec->acl[ss->listener]);
	}
	return acl_filter_fully_readable(id, filter, len);
}

void session_set_identity(struct session *ss, unsigned listener,
			  const char *username)
{
	free(ss->username);
	ss->username = username ? strdup(username) : NULL;
	ss->listener = (uint8_t)listener;
	if (ss->acl)
		acl_identity_unref(ss->acl);
	ss->acl = NULL;
	ss->acl_gen = 0; /* fetched on first use */
	session_recheck_reads(ss);
}
