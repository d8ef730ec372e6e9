/* Session state: subscriptions, the outgoing inflight window, the queue
 * behind it (and for offline persistent sessions), incoming QoS 2 ids.
 * Owned by one shard; memory only for now, and every durable change goes
 * through the functions declared in engine.h so a disk store can plug in
 * there. */
#include <assert.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "core/journal.h"
#include "core/log.h"
#include "io/engine.h"

/* ---- sessions by id (shared-subscription forwards find them) ------------ */

static bool sid_eq_cb(const struct htab_link *l, const void *id, size_t len)
{
	const struct session *ss = htab_entry(l, const struct session, id_link);
	return len == sizeof(ss->id) && !memcmp(&ss->id, id, len);
}

static int sid_insert(struct shard *s, struct session *ss)
{
	return htab_insert(&s->by_id, &ss->id_link,
			   hash_bytes(&ss->id, sizeof(ss->id)));
}

static void sid_remove(struct shard *s, struct session *ss)
{
	htab_remove(&s->by_id, &ss->id_link);
}

struct session *shard_session_by_id(struct shard *s, uint64_t id)
{
	return htab_entry(htab_find(&s->by_id, hash_bytes(&id, sizeof(id)), &id,
				    sizeof(id), sid_eq_cb),
			  struct session, id_link);
}

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
	if (sid_insert(s, ss) < 0) {
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
	for (uint32_t i = 0; i < ss->q_count; i++)
		msg_unref(ss->queue[(ss->q_head + i) % ss->q_cap].msg);
	for (uint32_t i = 0; i < ss->qos2_in_count; i++)
		msg_unref(ss->qos2_in[i].msg);
	stat_sub(&s->stats.inflight, ss->inflight_count);
	stat_sub(&s->stats.queued, ss->q_count);
	free(ss->inflight);
	free(ss->if_index);
	free(ss->queue);
	free(ss->qos2_in);
	sid_remove(s, ss);
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
		cluster_session_save(s, ss, false);
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
			cluster_interest(s->b, filter, len, true);
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
			cluster_interest(s->b, filter, len, false);
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

static int session_inflight_add(struct session *ss, struct msg *m,
				const struct deliv *d, uint16_t pid)
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
		persist_out(ss, f->msg_id, pid, d->qos == 1 ? JOURNAL_WAIT_PUBACK
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
		stats_drop(ss->shard, DROP_UNDELIVERABLE, 1);
		if (ss->logged)
			persist_done(ss, persist_msg_id(ss->shard, m));
		return;
	}
	if (session_inflight_add(ss, m, d, pid) < 0)
		conn_close(ss->conn, "out of memory", false);
	else if (d->qos == 2 && ss->logged)
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
		bridge_deliver(ss, m, d); /* maps the topic, then comes back */
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
				stats_drop(s, DROP_QUEUE_FULL, 1);
			return;
		}
		if (!session_online(ss))
			stats_drop(s, DROP_OFFLINE, 1);
		else if (!conn_queue_publish(ss->conn, m, d, false, 0))
			stats_drop(s, ss->conn->flags & CONN_DROPPING
					      ? DROP_QUEUE_FULL
					      : DROP_UNDELIVERABLE, 1);
		return;
	}
	if (session_online(ss) && !ss->q_count && session_window_open(ss) &&
	    !session_held(m, d)) {
		persist_queue(ss, m, d);
		session_send_new(ss, m, d, false);
		return;
	}
	if (!ss->persistent && !session_online(ss))
		return;
	if (session_queue_push(ss, m, d) < 0)
		stats_drop(s, DROP_QUEUE_FULL, 1);
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

void session_fire_will(struct session *ss)
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
		route_publish(ss->shard, w->msg); /* the reference goes */
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
				cluster_session_save(s, ss, true);
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
