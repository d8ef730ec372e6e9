/* Durable state: per-shard logs, acknowledgements that wait for them, and
 * recovery at startup (docs/PERSISTENCE.md).
 *
 * A shard appends records to `cur` as things change. At the end of each
 * loop turn `cur` becomes one write (with a linked fdatasync under
 * `persistence_sync always`); its completion moves `durable` on and
 * settles the tickets waiting for it, in append order. Positions are byte
 * offsets in the shard's current file ("LSN"). */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <urcu-qsbr.h>

#include "core/journal.h"
#include "core/mosqdb.h"
#include "core/log.h"
#include "io/engine.h"

/* persistence_location/persistence_file (PERSIST_FILE_MAX), its ".kite"
 * directory (PERSIST_DIR_MAX), a log file in it (PERSIST_LOG_PATH_MAX). */
#define PERSIST_FILE_MAX (KITE_PATH_MAX * 2 + 2)
#define PERSIST_DIR_MAX (PERSIST_FILE_MAX + 8)
#define PERSIST_LOG_PATH_MAX (PERSIST_DIR_MAX + 64)

/* user_data id of the log's two requests. */
enum persist_io { PERSIST_WRITE = 1, PERSIST_SYNC };

struct log_waiter {
	uint64_t lsn;
	struct persist_ticket *t;
};

struct shard_log {
	int fd;
	char path[PERSIST_LOG_PATH_MAX];
	uint64_t generation;
	struct journal_buf cur;	 /* this turn's records */
	struct journal_buf wbuf; /* being written */
	/* Positions count record bytes since startup, across generations;
	 * the current file holds those from file_base on (after its
	 * header). */
	uint64_t file_base;
	uint64_t appended;	 /* end of cur: the next record's position */
	uint64_t w_lsn;		 /* where wbuf starts */
	uint64_t written;	 /* end of the last completed write */
	uint64_t synced;	 /* end covered by a completed fdatasync */
	uint64_t durable;	 /* what acknowledgements may rely on */
	uint64_t sync_target;	 /* what the fdatasync in flight covers */
	bool write_busy, sync_busy;
	uint64_t last_sync_ms;
	/* Tickets waiting for a position, in append order. */
	struct log_waiter *wq;
	uint32_t wq_head, wq_count, wq_cap;
	/* Compaction: a new generation starts at an idle turn end; its
	 * snapshot is written a slice per turn behind the live records; the
	 * old file goes once the snapshot's end is synced. */
	bool compact_due, snapshotting, old_pending;
	struct session *snap_next; /* next session to restate */
	/* Shard 0's compaction restates the retained store too: the messages
	 * are gathered (a reference each) in one turn, their topics' current
	 * messages written a slice per turn. */
	struct msg **snap_ret;
	size_t snap_ret_n, snap_ret_next;
	bool snap_ret_gathered;
	uint64_t snap_end;	   /* position just after SNAPSHOT_END */
	uint64_t snap_bytes;	   /* the last snapshot's size */
	uint64_t changes;	   /* records since the last compaction */
	uint64_t last_compact_ms;
	char old_path[PERSIST_LOG_PATH_MAX];
	uint64_t last_logged_msg; /* a MSG record goes once per run of uses */
	uint64_t next_msg;	  /* this shard's message counter */
	uint64_t failed_writes;
	struct log_limit err_log;
};

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Where position v is in the current file. */
static uint64_t file_off(const struct shard_log *l, uint64_t v)
{
	assert(v >= l->file_base);
	return JOURNAL_HEADER_LEN + (v - l->file_base);
}

static bool sync_always(const struct shard *s)
{
	return s->cfg->persistence_sync_ms == KITE_PERSISTENCE_SYNC_ALWAYS;
}

/* ---- tickets ---------------------------------------------------------------- */

void persist_ticket_hold(struct persist_ticket *t)
{
	atomic_fetch_add_explicit(&t->pending, 1, memory_order_relaxed);
}

static void log_wait(struct shard *s, struct persist_ticket *t);

/* Every destination of a released QoS 2 message has it on disk: the
 * release is logged, and once that is durable too (the ticket's second
 * round) PUBCOMP leaves and the deliveries go. */
static void ticket_q2_logged(struct shard *s, struct persist_ticket *t)
{
	struct session *ss = shard_session_by_id(s, t->q2_key);
	if (ss)
		persist_qos2_rel(ss, t->q2_pid);
	t->q2_release = false;
	atomic_store(&t->pending, 1);
	log_wait(s, t);
}

static void ticket_q2_unhold(struct shard *s, struct msg *m)
{
	atomic_store(&m->q2_held, false);
	for (unsigned d = 0; d < s->b->nshards; d++) {
		if (d == s->idx)
			persist_on_q2_release(s, msg_ref(m));
		else
			shard_post(s, d, (struct xitem){XK_Q2_RELEASE, msg_ref(m)});
	}
}

void persist_ticket_done(struct shard *s, struct persist_ticket *t)
{
	assert(t->origin == s->idx);
	if (t->q2_release) {
		ticket_q2_logged(s, t);
		return;
	}
	struct conn *c = t->conn_gen ? shard_conn_lookup(s, t->conn_id, t->conn_gen)
				     : NULL;
	if (c && t->held && atomic_load(&t->refused)) {
		stat_add(&s->stats.persist_acks_withheld, 1);
		conn_close(c, "cluster: JetStream did not store the message, "
			      "acknowledgement withheld", true);
	} else if (c && t->held && atomic_load(&t->failed) && sync_always(s)) {
		/* It promised durability and cannot give it: no
		 * acknowledgement; the client sends again after reconnecting. */
		stat_add(&s->stats.persist_acks_withheld, 1);
		conn_close(c, "persistence: the change could not be written, "
			      "acknowledgement withheld", true);
	} else if (c && t->held) {
		conn_release_ack(c, t->held);
	}
	if (c && t->flush)
		conn_mark_dirty(c);
	if (t->msg) {
		if (atomic_load(&t->msg->q2_held))
			ticket_q2_unhold(s, t->msg);
		msg_unref(t->msg);
	}
	free(t);
}

void persist_on_q2_release(struct shard *s, struct msg *m)
{
	uint32_t n = s->q2_waiters_count;
	uint64_t *ids = s->q2_waiters;
	/* Sessions still blocked (by another held message) come back. */
	s->q2_waiters = NULL;
	s->q2_waiters_count = s->q2_waiters_cap = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct session *ss = shard_session_by_id(s, ids[i]);
		if (ss) {
			ss->q2_waiting = false;
			session_pump(ss);
		}
	}
	free(ids);
	msg_unref(m);
}

void persist_wait_release(struct session *ss)
{
	struct shard *s = ss->shard;
	if (ss->q2_waiting)
		return;
	if (s->q2_waiters_count == s->q2_waiters_cap) {
		uint32_t ncap = s->q2_waiters_cap ? s->q2_waiters_cap * 2 : 16;
		uint64_t *n = realloc(s->q2_waiters, sizeof(*n) * ncap);
		if (!n)
			return; /* the next release of any message retries it */
		s->q2_waiters = n;
		s->q2_waiters_cap = ncap;
	}
	s->q2_waiters[s->q2_waiters_count++] = ss->id;
	ss->q2_waiting = true;
}

void persist_gate(struct conn *c)
{
	struct shard *s = c->shard;
	if (!persist_on(s) || s->log->durable >= s->log->appended)
		return;
	c->gate_lsn = s->log->appended;
	struct persist_ticket *t = calloc(1, sizeof(*t));
	if (!t) {
		c->gate_lsn = 0; /* out of memory: send rather than stall */
		return;
	}
	atomic_init(&t->pending, 1);
	t->origin = (uint8_t)s->idx;
	t->flush = true;
	t->conn_id = c->id;
	t->conn_gen = c->gen;
	log_wait(s, t);
}

bool persist_gated(const struct conn *c)
{
	const struct shard *s = c->shard;
	return persist_on(s) && c->gate_lsn > s->log->durable;
}

void persist_ticket_discard(struct persist_ticket *t)
{
	if (t->msg)
		msg_unref(t->msg);
	free(t);
}

static void ticket_put(struct shard *s, struct persist_ticket *t)
{
	if (atomic_fetch_sub_explicit(&t->pending, 1, memory_order_acq_rel) != 1)
		return;
	if (t->origin == s->idx)
		persist_ticket_done(s, t);
	else
		shard_post(s, t->origin, (struct xitem){XK_TICKET, t});
}

/* t waits for everything this shard appended so far. */
static void log_wait(struct shard *s, struct persist_ticket *t)
{
	struct shard_log *l = s->log;
	if (!l || l->durable >= l->appended) {
		ticket_put(s, t);
		return;
	}
	if (l->wq_count == l->wq_cap) {
		uint32_t ncap = l->wq_cap ? l->wq_cap * 2 : 64;
		struct log_waiter *n = malloc(sizeof(*n) * ncap);
		if (!n) {
			/* Out of memory: acknowledge without waiting rather
			 * than never; the write is on its way anyway. */
			ticket_put(s, t);
			return;
		}
		for (uint32_t i = 0; i < l->wq_count; i++)
			n[i] = l->wq[(l->wq_head + i) % l->wq_cap];
		free(l->wq);
		l->wq = n;
		l->wq_head = 0;
		l->wq_cap = ncap;
	}
	l->wq[(l->wq_head + l->wq_count) % l->wq_cap] =
		(struct log_waiter){l->appended, t};
	l->wq_count++;
}

/* failed: the write (or sync) that covered them did not happen. */
static void log_settle_waiters_as(struct shard *s, bool failed)
{
	struct shard_log *l = s->log;
	while (l->wq_count && l->wq[l->wq_head].lsn <= l->durable) {
		struct persist_ticket *t = l->wq[l->wq_head].t;
		l->wq_head = (l->wq_head + 1) % l->wq_cap;
		l->wq_count--;
		if (failed)
			atomic_store(&t->failed, true);
		ticket_put(s, t);
	}
}

static void log_settle_waiters(struct shard *s)
{
	log_settle_waiters_as(s, false);
}

void persist_ticket_settle(struct shard *s, struct persist_ticket *t)
{
	if (persist_on(s))
		log_wait(s, t);
	else
		ticket_put(s, t);
}

static struct persist_ticket *ticket_new(struct shard *s, struct msg *m)
{
	struct persist_ticket *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	atomic_init(&t->pending, 1); /* the creator's own hold */
	t->origin = (uint8_t)s->idx;
	t->msg = m ? msg_ref(m) : NULL;
	return t;
}

struct persist_ticket *persist_ticket_begin(struct shard *s, struct msg *m)
{
	return persist_on(s) ? ticket_new(s, m) : NULL;
}

struct persist_ticket *persist_ticket_new(struct shard *s, struct msg *m)
{
	return ticket_new(s, m);
}

/* The ack waits on c behind the ones before it; the ticket releases it. */
static void ticket_hold_ack(struct persist_ticket *t, struct conn *c,
			    const uint8_t *bytes, size_t len)
{
	struct held_ack *h = len ? conn_hold_ack(c, len) : NULL;
	if (!h) {
		if (len)
			conn_queue_ack(c, bytes, len); /* out of memory */
		return;
	}
	held_ack_set(h, bytes, len);
	t->held = h;
	t->conn_id = c->id;
	t->conn_gen = c->gen;
}

void persist_ticket_ack(struct shard *s, struct persist_ticket *t,
			struct conn *c, const uint8_t *bytes, size_t len)
{
	if (!t) {
		if (len)
			conn_queue_ack(c, bytes, len);
		return;
	}
	if (c && c->state != CONN_CLOSING)
		ticket_hold_ack(t, c, bytes, len);
	log_wait(s, t); /* the creator's hold: after this shard's records */
}

bool persist_pending(const struct conn *c)
{
	const struct shard *s = c->shard;
	return persist_on(s) && c->session && c->session->logged;
}

void persist_hold(struct conn *c, struct held_ack *h)
{
	struct shard *s = c->shard;
	if (!persist_on(s) || s->log->durable >= s->log->appended)
		return;
	struct persist_ticket *t = ticket_new(s, NULL);
	if (!t)
		return;
	held_ack_expect(h);
	t->held = h;
	t->conn_id = c->id;
	t->conn_gen = c->gen;
	log_wait(s, t);
}

void persist_ack(struct conn *c, const uint8_t *bytes, size_t len)
{
	struct shard *s = c->shard;
	if (!persist_on(s) || s->log->durable >= s->log->appended) {
		conn_queue_ack(c, bytes, len);
		return;
	}
	struct persist_ticket *t = ticket_new(s, NULL);
	if (!t) {
		conn_queue_ack(c, bytes, len);
		return;
	}
	ticket_hold_ack(t, c, bytes, len);
	log_wait(s, t);
}

/* ---- appending records -------------------------------------------------- */

static void log_put(struct shard *s, const struct journal_record *r)
{
	struct shard_log *l = s->log;
	size_t before = l->cur.len;
	if (journal_put(&l->cur, r) < 0) {
		uint32_t left_out;
		if (log_limit_take(&l->err_log, s->now_ms, 1, &left_out))
			log_msg(KITE_LOG_ERR, "Persistence: out of memory "
				"logging a change (shard %u): it is not durable",
				s->idx);
		return;
	}
	l->appended += l->cur.len - before;
	l->changes++;
}

static struct journal_bytes jb(const void *p, size_t len)
{
	return (struct journal_bytes){p, (uint32_t)len};
}

uint64_t persist_msg_id(struct shard *s, struct msg *m)
{
	uint64_t id = atomic_load_explicit(&m->log_id, memory_order_acquire);
	if (id)
		return id;
	uint64_t mine = ((uint64_t)s->idx + 1) << 56 | ++s->log->next_msg;
	if (atomic_compare_exchange_strong(&m->log_id, &id, mine))
		return mine;
	return id; /* another shard named it first */
}

/* Monotonic creation time as wall time, for expiry across restarts. */
static uint64_t msg_created_wall(const struct shard *s, const struct msg *m)
{
	uint64_t now = wall_ms();
	uint64_t age = s->now_ms > m->created_ms ? s->now_ms - m->created_ms : 0;
	return now > age ? now - age : now;
}

static void log_msg_record(struct shard *s, struct msg *m, uint64_t id)
{
	struct journal_record r = {.type = JOURNAL_MSG};
	r.msg.id = id;
	r.msg.qos = m->qos;
	r.msg.retain = m->retain;
	r.msg.expiry_s = m->expiry_s;
	r.msg.created_wall_ms = msg_created_wall(s, m);
	r.msg.topic = jb(msg_topic(m), m->topic_len);
	r.msg.payload = jb(msg_payload(m), m->payload_len);
	r.msg.props = jb(msg_payload(m) + m->payload_len, m->props_len);
	log_put(s, &r);
}

/* m's id, with its MSG record ahead of the record about to refer to it. */
static uint64_t log_msg_ref(struct shard *s, struct msg *m)
{
	uint64_t id = persist_msg_id(s, m);
	if (s->log->last_logged_msg != id) {
		log_msg_record(s, m, id);
		s->log->last_logged_msg = id;
	}
	return id;
}

/* A session whose SESSION record is in the log gets the others. */
static bool logs(const struct session *ss)
{
	return persist_on(ss->shard) && ss->logged;
}

static void log_session(struct shard *s, const struct session *ss)
{
	struct journal_record r = {.type = JOURNAL_SESSION};
	r.session.key = ss->id;
	r.session.expiry_s = ss->expiry_s;
	r.session.offline_wall_ms = ss->conn ? 0 : ss->offline_wall_ms;
	r.session.protocol = ss->conn ? ss->conn->version : ss->protocol;
	r.session.listener = ss->listener;
	r.session.has_username = ss->username != NULL;
	r.session.client_id = jb(ss->client_id, ss->client_id_len);
	r.session.username = jb(ss->username ? ss->username : "",
				ss->username ? strlen(ss->username) : 0);
	r.session.last_pid = ss->next_pid;
	/* A bridge's local side goes under "\0" + its local_clientid: MQTT
	 * forbids U+0000 in a client id, so no client's session can take
	 * its place when the logs are read back. */
	char *bid = NULL;
	if (ss->of_bridge) {
		bid = malloc((size_t)ss->client_id_len + 1u);
		if (!bid) {
			log_msg(KITE_LOG_ERR, "Persistence: out of memory: bridge "
				"session %s not logged", ss->client_id);
			return;
		}
		bid[0] = '\0';
		memcpy(bid + 1, ss->client_id, ss->client_id_len);
		r.session.client_id = jb(bid, (size_t)ss->client_id_len + 1u);
	}
	log_put(s, &r);
	free(bid);
}

void persist_session(struct session *ss)
{
	if (!persist_on(ss->shard))
		return;
	if (!ss->persistent) { /* now ends with its connection */
		persist_session_end(ss);
		return;
	}
	if (ss->conn)
		ss->protocol = ss->conn->version;
	/* Expiry counts from the disconnect, across restarts too. */
	ss->offline_wall_ms = ss->conn ? 0 : wall_ms();
	log_session(ss->shard, ss);
	ss->logged = true;
}

void persist_session_end(struct session *ss)
{
	if (!persist_on(ss->shard))
		return;
	if (ss->shard->log->snap_next == ss) /* compaction's place */
		ss->shard->log->snap_next = ss->next;
	if (!ss->logged)
		return;
	struct journal_record r = {.type = JOURNAL_SESSION_END};
	r.session_end.key = ss->id;
	log_put(ss->shard, &r);
	ss->logged = false;
}

void persist_sub(struct session *ss, const char *filter, uint16_t len,
		 uint32_t options, uint32_t sub_id)
{
	if (!logs(ss))
		return;
	struct journal_record r = {.type = JOURNAL_SUB};
	r.sub.key = ss->id;
	r.sub.options = (uint8_t)options;
	r.sub.sub_id = sub_id;
	r.sub.filter = jb(filter, len);
	log_put(ss->shard, &r);
}

void persist_unsub(struct session *ss, const char *filter, uint16_t len)
{
	if (!logs(ss))
		return;
	struct journal_record r = {.type = JOURNAL_UNSUB};
	r.unsub.key = ss->id;
	r.unsub.filter = jb(filter, len);
	log_put(ss->shard, &r);
}

static void log_queue(struct shard *s, uint64_t key, uint64_t id,
		      const struct deliv *d)
{
	struct journal_record r = {.type = JOURNAL_QUEUE};
	r.queue.key = key;
	r.queue.msg_id = id;
	r.queue.qos = d->qos;
	r.queue.retain = d->retain;
	r.queue.nsub = d->nsub;
	memcpy(r.queue.sub, d->sub, sizeof(r.queue.sub));
	log_put(s, &r);
}

void persist_queue(struct session *ss, struct msg *m, const struct deliv *d)
{
	if (!logs(ss) || d->qos == 0)
		return;
	_Static_assert(DELIV_SUBIDS_MAX == JOURNAL_SUBIDS_MAX, "one size");
	log_queue(ss->shard, ss->id, log_msg_ref(ss->shard, m), d);
}

static void log_out(struct shard *s, uint64_t key, uint64_t id, uint16_t pid,
		    uint8_t state)
{
	struct journal_record r = {.type = JOURNAL_OUT};
	r.out.key = key;
	r.out.msg_id = id;
	r.out.pid = pid;
	r.out.state = state;
	log_put(s, &r);
}

void persist_out(struct session *ss, uint64_t msg_id, uint16_t pid,
		 uint8_t state)
{
	if (logs(ss))
		log_out(ss->shard, ss->id, msg_id, pid, state);
}

void persist_done(struct session *ss, uint64_t msg_id)
{
	if (!logs(ss))
		return;
	struct journal_record r = {.type = JOURNAL_DONE};
	r.done.key = ss->id;
	r.done.msg_id = msg_id;
	log_put(ss->shard, &r);
}

static void log_qos2_in(struct shard *s, uint64_t key, uint16_t pid,
			uint64_t id)
{
	struct journal_record r = {.type = JOURNAL_QOS2_IN};
	r.qos2_in.key = key;
	r.qos2_in.msg_id = id;
	r.qos2_in.pid = pid;
	log_put(s, &r);
}

void persist_qos2_in(struct session *ss, uint16_t pid, struct msg *m)
{
	if (logs(ss))
		log_qos2_in(ss->shard, ss->id, pid, log_msg_ref(ss->shard, m));
}

void persist_qos2_rel(struct session *ss, uint16_t pid)
{
	if (!logs(ss))
		return;
	struct journal_record r = {.type = JOURNAL_QOS2_REL};
	r.qos2_rel.key = ss->id;
	r.qos2_rel.pid = pid;
	log_put(ss->shard, &r);
}

static void log_will(struct shard *s, const struct session *ss)
{
	struct journal_record r = {.type = JOURNAL_WILL};
	r.will.key = ss->id;
	if (ss->delayed_will) {
		r.will.msg_id = log_msg_ref(s, ss->delayed_will->msg);
		uint64_t left = ss->will_at_ms > s->now_ms ? ss->will_at_ms - s->now_ms : 0;
		r.will.at_wall_ms = wall_ms() + left;
	}
	log_put(s, &r);
}

void persist_will(struct session *ss)
{
	if (logs(ss))
		log_will(ss->shard, ss);
}

static void log_retain(struct shard *s, struct msg *m)
{
	struct journal_record r = {.type = JOURNAL_RETAIN};
	r.retain.topic = jb(msg_topic(m), m->topic_len);
	if (m->payload_len)
		r.retain.msg_id = log_msg_ref(s, m);
	const struct msg_source *src = m->source;
	if (r.retain.msg_id && src) {
		r.retain.has_source = true;
		r.retain.source_listener = src->listener;
		r.retain.source_has_username = src->username != NULL;
		r.retain.source_client_id = jb(src->client_id,
					       (uint32_t)strlen(src->client_id));
		if (src->username)
			r.retain.source_username =
				jb(src->username, (uint32_t)strlen(src->username));
	}
	log_put(s, &r);
}

void persist_retained(struct shard *s, struct msg *m, struct persist_ticket *t)
{
	/* $SYS is the broker's own, published anew after every start. */
	if (!persist_on(s) || (m->topic_len && msg_topic(m)[0] == '$'))
		return;
	if (s->idx == 0) {
		log_retain(s, m); /* the publish's own wait covers it */
		return;
	}
	if (t) {
		assert(t->msg == m);
		persist_ticket_hold(t);
	} else if (!(t = ticket_new(s, m))) {
		log_msg(KITE_LOG_ERR, "Persistence: out of memory: retained "
			"message on '%.*s' not logged", (int)m->topic_len,
			msg_topic(m));
		return;
	}
	shard_post(s, 0, (struct xitem){XK_RETAIN_T, t});
}

struct retained_now {
	struct shard *s;
	bool found;
};

static void log_retained_now_cb(void *ctx, void *msg)
{
	struct retained_now *rn = ctx;
	rn->found = true;
	log_retain(rn->s, msg);
}

/* Writes what the store holds for m's topic now, not m: shards post their
 * retained changes to shard 0 in no common order, so two publishes on one
 * topic from two shards may arrive here swapped. The store was set before
 * each post, so the last record written for a topic is its final state. */
static void log_retained_now(struct shard *s, const struct msg *m)
{
	struct retained_now rn = {.s = s};
	rcu_read_lock();
	retain_match(s->b->retained, msg_topic(m), m->topic_len,
		     log_retained_now_cb, &rn);
	rcu_read_unlock();
	if (!rn.found) {
		struct journal_record r = {.type = JOURNAL_RETAIN};
		r.retain.topic = jb(msg_topic(m), m->topic_len);
		log_put(s, &r);
	}
}

void persist_on_retained(struct shard *s, struct persist_ticket *t)
{
	log_retained_now(s, t->msg);
	log_wait(s, t);
}

/* ---- writing ---------------------------------------------------------------- */

static void log_submit_sync(struct shard *s, uint64_t target)
{
	struct shard_log *l = s->log;
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_fsync(sqe, l->fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_PERSIST, PERSIST_SYNC, 0));
	l->sync_busy = true;
	l->sync_target = target;
}

static void log_submit_write(struct shard *s)
{
	struct shard_log *l = s->log;
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_write(sqe, l->fd, l->wbuf.data, (unsigned)l->wbuf.len,
			    file_off(l, l->w_lsn));
	io_uring_sqe_set_data64(sqe, ud_pack(UD_PERSIST, PERSIST_WRITE, 0));
	l->write_busy = true;
}

static void compact_start(struct shard *s);
static void snapshot_slice(struct shard *s);

void persist_turn_end(struct shard *s)
{
	struct shard_log *l = s->log;
	if (l && l->compact_due && !l->write_busy && !l->sync_busy)
		compact_start(s);
	if (l && l->snapshotting)
		snapshot_slice(s);
	/* With `always` a write and its fdatasync are one step. */
	if (!l || l->write_busy || (sync_always(s) && l->sync_busy) ||
	    !l->cur.len)
		return;
	/* The turn's records become one write; the next turn fills a
	 * fresh buffer meanwhile. */
	struct journal_buf t = l->wbuf;
	l->wbuf = l->cur;
	l->cur = t;
	l->cur.len = 0;
	l->w_lsn = l->appended - l->wbuf.len;
	log_submit_write(s);
}

static void log_write_failed(struct shard *s, int err)
{
	struct shard_log *l = s->log;
	uint32_t left_out;
	l->failed_writes++;
	stat_add(&s->stats.persist_write_errors, 1);
	if (log_limit_take(&l->err_log, s->now_ms, 1, &left_out))
		log_msg(KITE_LOG_ERR, "Persistence: writing %s failed: %s; "
			"%zu bytes of changes are not durable (%llu failed "
			"writes so far); %s", l->path, strerror(err),
			l->wbuf.len, (unsigned long long)l->failed_writes,
			sync_always(s) ? "their acknowledgements are withheld "
					 "(persistence_sync always)"
				       : "acknowledgements go on");
}

/* Log buffers larger than this are freed once written. */
#define LOG_BUF_KEEP (4u << 20)

static void log_on_write(struct shard *s, int res)
{
	struct shard_log *l = s->log;
	if (res > 0 && (size_t)res < l->wbuf.len) {
		/* Short write (a signal, a full disk on the way): the
		 * rest goes again at its own offset. */
		memmove(l->wbuf.data, l->wbuf.data + res, l->wbuf.len - (size_t)res);
		l->wbuf.len -= (size_t)res;
		l->w_lsn += (uint64_t)res;
		log_submit_write(s);
		return;
	}
	if (res < 0)
		log_write_failed(s, -res);
	else
		stat_add(&s->stats.persist_bytes_written, l->wbuf.len);
	l->write_busy = false;
	l->written = l->w_lsn + l->wbuf.len;
	l->wbuf.len = 0;
	/* A snapshot's retained store or a burst can grow a buffer to many
	 * MiB; keeping that capacity would hold it resident for good. */
	if (l->wbuf.cap > LOG_BUF_KEEP)
		journal_buf_free(&l->wbuf);
	if (sync_always(s) && res >= 0) {
		log_submit_sync(s, l->written);
		return;
	}
	/* A failed write is not retried: its records are gone from
	 * memory already. What waits on it is released, marked failed
	 * (persist_ticket_done decides what that costs the client). */
	l->durable = l->written;
	log_settle_waiters_as(s, res < 0);
}

static void log_on_sync(struct shard *s, int res)
{
	struct shard_log *l = s->log;
	l->sync_busy = false;
	l->last_sync_ms = s->now_ms;
	if (res < 0)
		log_write_failed(s, -res);
	else
		l->synced = l->sync_target;
	if (sync_always(s)) {
		l->durable = l->sync_target;
		log_settle_waiters_as(s, res < 0);
	}
}

void persist_on_cqe(struct shard *s, uint32_t what, int res)
{
	if (!s->log)
		return;
	if (what == PERSIST_WRITE)
		log_on_write(s, res);
	else
		log_on_sync(s, res);
}

/* Beyond twice the last snapshot and this, the log is compacted. */
#define COMPACT_SLACK_BYTES (64u << 20)

static bool compact_wanted(const struct shard *s)
{
	const struct shard_log *l = s->log;
	const struct kite_config *cfg = s->cfg;
	if (l->snapshotting || l->old_pending || l->compact_due)
		return false;
	if (l->appended - l->file_base > 2 * l->snap_bytes + COMPACT_SLACK_BYTES)
		return true;
	/* Mosquitto's autosave: seconds (or changes) between saves. */
	if (!cfg->autosave_interval_s || !l->changes)
		return false;
	return cfg->autosave_on_changes
		       ? l->changes >= cfg->autosave_interval_s
		       : s->now_ms - l->last_compact_ms >=
				 (uint64_t)cfg->autosave_interval_s * 1000u;
}

void persist_tick(struct shard *s)
{
	struct shard_log *l = s->log;
	if (!l)
		return;
	if (compact_wanted(s))
		l->compact_due = true;
	if (l->old_pending && l->synced >= l->snap_end) {
		/* The new generation stands on its own: the old one goes. */
		if (unlink(l->old_path) < 0 && errno != ENOENT)
			log_msg(KITE_LOG_WARNING, "Persistence: cannot remove %s: %s",
				l->old_path, strerror(errno));
		l->old_pending = false;
	}
	uint32_t ms = s->cfg->persistence_sync_ms;
	if (l->sync_busy || l->synced >= l->written ||
	    ms == KITE_PERSISTENCE_SYNC_ALWAYS)
		return;
	bool due = ms != KITE_PERSISTENCE_SYNC_NEVER &&
		   s->now_ms - l->last_sync_ms >= ms;
	/* Under `never`, the one sync a finished snapshot needs. */
	if (due || (l->old_pending && l->written >= l->snap_end))
		log_submit_sync(s, l->written);
}

/* ---- snapshots ---------------------------------------------------------------- */

/* Everything one session is, as records (idempotent over what is logged
 * already: replay keeps the first copy of each message). */
static void snapshot_session(struct shard *s, struct session *ss)
{
	log_session(s, ss);
	ss->logged = true;
	for (struct sub_entry *e = ss->subs; e; e = e->next) {
		struct journal_record r = {.type = JOURNAL_SUB};
		r.sub.key = ss->id;
		r.sub.options = e->options;
		r.sub.sub_id = e->sub_id;
		r.sub.filter = jb(e->filter, e->len);
		log_put(s, &r);
	}
	for (uint32_t i = ss->if_head; i != ss->if_tail; i++) {
		struct inflight *f = session_inflight_at(ss, i);
		if (f->state == INFLIGHT_DONE)
			continue;
		if (f->msg) {
			f->msg_id = log_msg_ref(s, f->msg);
			log_queue(s, ss->id, f->msg_id, &f->d);
		}
		log_out(s, ss->id, f->msg_id, f->pid,
			f->state == INFLIGHT_WAIT_PUBACK ? JOURNAL_WAIT_PUBACK
			: f->state == INFLIGHT_WAIT_PUBREC ? JOURNAL_WAIT_PUBREC
							   : JOURNAL_WAIT_PUBCOMP);
	}
	for (uint32_t i = 0; i < ss->q_count; i++) {
		struct queued *q = &ss->queue[(ss->q_head + i) % ss->q_cap];
		log_queue(s, ss->id, log_msg_ref(s, q->msg), &q->d);
	}
	for (uint32_t i = 0; i < ss->qos2_in_count; i++)
		log_qos2_in(s, ss->id, ss->qos2_in[i].pid,
			    log_msg_ref(s, ss->qos2_in[i].msg));
	if (ss->delayed_will)
		log_will(s, ss);
}

static void snapshot_retained_cb(void *ctx, void *msg)
{
	log_retain(ctx, msg);
}

static void snapshot_end(struct shard *s)
{
	struct shard_log *l = s->log;
	struct journal_record end = {.type = JOURNAL_SNAPSHOT_END};
	log_put(s, &end);
	l->snap_end = l->appended;
	l->snap_bytes = l->snap_end - l->file_base;
	l->snapshotting = false;
}

/* At startup nothing else runs: everything in one go. */
static void snapshot_shard(struct shard *s)
{
	for (struct session *ss = s->sessions; ss; ss = ss->next)
		if (ss->persistent)
			snapshot_session(s, ss);
	if (s->idx == 0) {
		rcu_read_lock();
		retain_match(s->b->retained, "#", 1, snapshot_retained_cb, s);
		rcu_read_unlock();
	}
	snapshot_end(s);
}

struct retained_gather {
	struct msg **v;
	size_t n, cap;
	bool failed;
};

static void retained_gather_cb(void *ctx, void *msg)
{
	struct retained_gather *g = ctx;
	if (g->failed)
		return;
	if (g->n == g->cap) {
		size_t cap = g->cap ? 2 * g->cap : 1024;
		struct msg **v = realloc(g->v, cap * sizeof(*v));
		if (!v) {
			g->failed = true;
			return;
		}
		g->v = v;
		g->cap = cap;
	}
	g->v[g->n++] = msg_ref(msg);
}

static void snapshot_retained_drop(struct shard_log *l)
{
	for (size_t i = l->snap_ret_next; i < l->snap_ret_n; i++)
		msg_unref(l->snap_ret[i]);
	free(l->snap_ret);
	l->snap_ret = NULL;
	l->snap_ret_n = l->snap_ret_next = 0;
	l->snap_ret_gathered = false;
}

/* Gathering holds a reference, not a copy, per retained message (8 bytes
 * each); a topic changed or cleared after the gathering had its change
 * logged behind the generation's start already, and its slice writes the
 * store's message of the moment, so the file order ends on the truth.
 * False when memory ran out: the retained store goes in one turn. */
static bool snapshot_retained_gather(struct shard *s)
{
	struct shard_log *l = s->log;
	struct retained_gather g = {0};
	rcu_read_lock();
	retain_match(s->b->retained, "#", 1, retained_gather_cb, &g);
	rcu_read_unlock();
	l->snap_ret = g.v;
	l->snap_ret_n = g.n;
	l->snap_ret_next = 0;
	l->snap_ret_gathered = true;
	if (!g.failed)
		return true;
	snapshot_retained_drop(l);
	rcu_read_lock();
	retain_match(s->b->retained, "#", 1, snapshot_retained_cb, s);
	rcu_read_unlock();
	l->snap_ret_gathered = true;
	return false;
}

/* Restates up to this many bytes of sessions per loop turn. */
#define SNAPSHOT_SLICE_BYTES (256u << 10)

static void snapshot_slice(struct shard *s)
{
	struct shard_log *l = s->log;
	size_t start = l->cur.len;
	while (l->snap_next && l->cur.len - start < SNAPSHOT_SLICE_BYTES) {
		struct session *ss = l->snap_next;
		l->snap_next = ss->next;
		if (ss->persistent && ss->logged)
			snapshot_session(s, ss);
	}
	if (l->snap_next)
		return;
	if (s->idx == 0) {
		if (!l->snap_ret_gathered && snapshot_retained_gather(s))
			return; /* the gathering was this turn's work */
		while (l->snap_ret_next < l->snap_ret_n &&
		       l->cur.len - start < SNAPSHOT_SLICE_BYTES) {
			struct msg *m = l->snap_ret[l->snap_ret_next++];
			log_retained_now(s, m);
			msg_unref(m);
		}
		if (l->snap_ret_next < l->snap_ret_n)
			return;
		snapshot_retained_drop(l);
	}
	snapshot_end(s);
	l->old_pending = true;
}

/* ---- files ------------------------------------------------------------------- */

static char persist_dir[PERSIST_DIR_MAX];

static void shard_log_path(char *out, size_t len, unsigned shard,
			   uint64_t gen)
{
	snprintf(out, len, "%s/shard-%u.%llu.log", persist_dir, shard,
		 (unsigned long long)gen);
}

/* Writes all of buf at off, synchronously (startup and shutdown). */
static int write_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static void fsync_dir(void)
{
	int fd = open(persist_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* A new log generation for s, opened and holding a snapshot of what s
 * owns, durable. */
static int shard_log_open(struct shard *s, uint64_t gen, uint64_t next_msg)
{
	struct shard_log *l = calloc(1, sizeof(*l));
	if (!l)
		return -1;
	shard_log_path(l->path, sizeof(l->path), s->idx, gen);
	l->fd = open(l->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (l->fd < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot create %s: %s",
			l->path, strerror(errno));
		free(l);
		return -1;
	}
	l->generation = gen;
	l->next_msg = next_msg;
	uint8_t hdr[JOURNAL_HEADER_LEN];
	journal_header(hdr, s->idx, gen);
	s->log = l;
	snapshot_shard(s);
	l->snap_bytes = l->cur.len;
	int rc = write_all(l->fd, hdr, sizeof(hdr), 0);
	if (rc == 0)
		rc = write_all(l->fd, l->cur.data, l->cur.len, sizeof(hdr));
	if (rc == 0)
		rc = fdatasync(l->fd);
	if (rc < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: writing %s: %s",
			l->path, strerror(errno));
		return -1;
	}
	/* Positions count from the file's start. */
	l->appended = l->cur.len;
	l->written = l->synced = l->durable = l->appended;
	/* The whole shard's snapshot: hundreds of MiB for a large state. */
	journal_buf_free(&l->cur);
	l->last_logged_msg = 0;
	l->last_sync_ms = l->last_compact_ms = s->now_ms;
	l->changes = 0;
	return 0;
}

/* At an idle turn end (nothing in flight: the old file has every record
 * before `written`): the next generation's file takes every record from
 * here on, and the snapshot slices follow them into it. */
static void compact_start(struct shard *s)
{
	struct shard_log *l = s->log;
	char path[sizeof(l->path)];
	l->compact_due = false;
	l->last_compact_ms = s->now_ms;
	l->changes = 0;
	shard_log_path(path, sizeof(path), s->idx, l->generation + 1);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	uint8_t hdr[JOURNAL_HEADER_LEN];
	journal_header(hdr, s->idx, l->generation + 1);
	if (fd < 0 || write_all(fd, hdr, sizeof(hdr), 0) < 0) {
		uint32_t left_out;
		if (log_limit_take(&l->err_log, s->now_ms, 1, &left_out))
			log_msg(KITE_LOG_ERR, "Persistence: cannot start %s: %s; "
				"the log goes on growing until it can",
				path, strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlink(path);
		}
		return;
	}
	close(l->fd);
	memcpy(l->old_path, l->path, sizeof(l->old_path));
	memcpy(l->path, path, sizeof(l->path));
	l->fd = fd;
	l->generation++;
	l->file_base = l->written;
	l->last_logged_msg = 0; /* MSG records start over in this file */
	l->snap_next = s->sessions;
	l->snapshotting = true;
	stat_add(&s->stats.persist_compactions, 1);
	if (log_enabled(KITE_LOG_INFO))
		log_msg(KITE_LOG_INFO, "Persistence: compacting shard %u into %s",
			s->idx, path);
}

void persist_shard_stop(struct shard *s)
{
	struct shard_log *l = s->log;
	if (!l)
		return;
	/* A write still in flight may be cancelled with the ring: its
	 * bytes (still in wbuf) go again, synchronously, at their offset;
	 * then what this turn added. */
	if (l->write_busy && l->wbuf.len &&
	    write_all(l->fd, l->wbuf.data, l->wbuf.len, file_off(l, l->w_lsn)) < 0)
		log_msg(KITE_LOG_ERR, "Persistence: writing %s at shutdown: %s",
			l->path, strerror(errno));
	if (l->cur.len &&
	    write_all(l->fd, l->cur.data, l->cur.len,
		      file_off(l, l->appended - l->cur.len)) < 0)
		log_msg(KITE_LOG_ERR, "Persistence: writing %s at shutdown: %s",
			l->path, strerror(errno));
	if (fdatasync(l->fd) < 0)
		log_msg(KITE_LOG_ERR, "Persistence: syncing %s at shutdown: %s",
			l->path, strerror(errno));
	close(l->fd);
	/* Written and synced now: what waited is released (a holder on
	 * another shard, or shutdown's discard, frees each ticket). */
	l->durable = l->appended;
	log_settle_waiters(s);
	snapshot_retained_drop(l);
	free(l->wq);
	journal_buf_free(&l->cur);
	journal_buf_free(&l->wbuf);
	free(l);
	s->log = NULL;
}

/* ---- recovery ---------------------------------------------------------------- */

/* What the files say, before it becomes sessions. */
struct rmsg {
	struct htab_link link;
	uint64_t id;
	struct msg *m;
	uint64_t created_wall_ms;
};

struct rsub {
	struct rsub *next;
	uint8_t options;
	uint32_t sub_id;
	uint16_t len;
	char filter[];
};

/* Queued (pid 0) or in flight. Also in recovery.outs by (session key,
 * message id): a session's queue can hold a million messages, and every
 * QUEUE, OUT and DONE record looks one up. */
struct rout {
	struct htab_link link;
	uint64_t skey, msg_id; /* the key: right after the link */
	struct rout *next, **pprev;
	struct rmsg *rm; /* its message when found while reading, else NULL */
	struct deliv d;
	uint16_t pid;
	uint8_t state; /* enum journal_out_state; 0 while queued */
};

struct rqos2 {
	struct rqos2 *next;
	uint16_t pid;
	uint64_t msg_id;
};

struct rsess {
	struct htab_link link;
	uint64_t key;
	char *client_id;
	uint16_t id_len;
	uint32_t expiry_s;
	uint64_t offline_wall_ms;
	uint8_t protocol, listener;
	char *username;
	struct rsub *subs;
	struct rout *out, **out_tail;
	struct rqos2 *qos2;
	uint64_t will_msg, will_at_wall_ms;
	uint16_t last_pid; /* of the last SESSION or OUT record */
	uint64_t top_out; /* highest message id queued to it: as top_msg */
	struct htab_link by_id; /* build_all: newest session per client id */
	bool superseded;
};

struct rretain {
	struct htab_link link;
	uint64_t msg_id;
	struct rmsg *rm; /* as rout's */
	uint16_t len;
	char topic[];
};

struct recovery {
	struct htab msgs, sessions, retained, outs;
	/* The files hold a MSG record just before the QUEUE or RETAIN record
	 * that uses it, and a session's records together: remembering the
	 * last of each spares a hash lookup (a cache miss or two, most of
	 * the reading's time) for most records. Entries are only freed
	 * after reading, except a session at its SESSION_END. */
	struct rmsg *last_msg;
	struct rsess *last_sess;
	/* The highest message id read so far: a MSG record above it cannot
	 * repeat one, and needs no lookup (live logs grow in id order). */
	uint64_t top_msg;
	uint64_t max_key, max_msg;
	uint32_t records, files, unresolved;
};

static bool u64_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	/* Both entry types start their key right after the link. */
	return *(const uint64_t *)(l + 1) == *(const uint64_t *)key;
}

static uint64_t u64_hash(uint64_t v)
{
	return hash_bytes(&v, sizeof(v));
}

_Static_assert(offsetof(struct rmsg, id) == sizeof(struct htab_link), "key after link");
_Static_assert(offsetof(struct rsess, key) == sizeof(struct htab_link), "key after link");

static struct rsess *rsess_find(struct recovery *rc, uint64_t key)
{
	return htab_entry(htab_find(&rc->sessions, u64_hash(key), &key, 8, u64_eq_cb),
			  struct rsess, link);
}

static struct rmsg *rmsg_find(struct recovery *rc, uint64_t id)
{
	return htab_entry(htab_find(&rc->msgs, u64_hash(id), &id, 8, u64_eq_cb),
			  struct rmsg, link);
}

static bool topic_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct rretain *r = htab_entry(l, const struct rretain, link);
	return r->len == len && !memcmp(r->topic, key, len);
}

/* outs: the table the session's queue is in, or NULL when that table is
 * already gone. */
static void rsess_free_items(struct rsess *rs, struct htab *outs)
{
	while (rs->subs) {
		struct rsub *n = rs->subs->next;
		free(rs->subs);
		rs->subs = n;
	}
	while (rs->out) {
		struct rout *n = rs->out->next;
		if (outs)
			htab_remove(outs, &rs->out->link);
		free(rs->out);
		rs->out = n;
	}
	rs->out_tail = &rs->out;
	while (rs->qos2) {
		struct rqos2 *n = rs->qos2->next;
		free(rs->qos2);
		rs->qos2 = n;
	}
}

static void rout_unindex(struct htab_link *l)
{
	(void)l;
}

static void rsess_free(struct htab_link *l)
{
	struct rsess *rs = htab_entry(l, struct rsess, link);
	rsess_free_items(rs, NULL);
	free(rs->client_id);
	free(rs->username);
	free(rs);
}

static void rmsg_free(struct htab_link *l)
{
	struct rmsg *r = htab_entry(l, struct rmsg, link);
	msg_unref(r->m);
	free(r);
}

static void unlink_cb(struct htab_link *l)
{
	(void)l; /* the entries belong to rc.sessions */
}

static void rretain_free(struct htab_link *l)
{
	free(htab_entry(l, struct rretain, link));
}

static char *dup_bytes(struct journal_bytes b)
{
	char *p = malloc((size_t)b.len + 1);
	if (p) {
		memcpy(p, b.ptr, b.len);
		p[b.len] = 0;
	}
	return p;
}

static int apply_session(struct recovery *rc, const struct journal_record *r)
{
	struct rsess *rs = rsess_find(rc, r->session.key);
	if (!rs) {
		if (!(rs = calloc(1, sizeof(*rs))))
			return -1;
		rs->key = r->session.key;
		rs->out_tail = &rs->out;
		if (htab_insert(&rc->sessions, &rs->link, u64_hash(rs->key)) < 0) {
			free(rs);
			return -1;
		}
	}
	free(rs->client_id);
	free(rs->username);
	rs->client_id = dup_bytes(r->session.client_id);
	rs->id_len = (uint16_t)r->session.client_id.len;
	rs->username = r->session.has_username ? dup_bytes(r->session.username) : NULL;
	rs->expiry_s = r->session.expiry_s;
	rs->offline_wall_ms = r->session.offline_wall_ms;
	rs->protocol = r->session.protocol;
	rs->listener = r->session.listener;
	if (r->session.last_pid)
		rs->last_pid = r->session.last_pid;
	if (r->session.key > rc->max_key)
		rc->max_key = r->session.key;
	rc->last_sess = rs;
	return rs->client_id ? 0 : -1;
}

static int apply_sub(struct rsess *rs, const struct journal_record *r, bool add)
{
	struct journal_bytes f = add ? r->sub.filter : r->unsub.filter;
	for (struct rsub **pp = &rs->subs; *pp; pp = &(*pp)->next) {
		if ((*pp)->len == f.len && !memcmp((*pp)->filter, f.ptr, f.len)) {
			struct rsub *old = *pp;
			*pp = old->next;
			free(old);
			break;
		}
	}
	if (!add)
		return 0;
	struct rsub *n = malloc(sizeof(*n) + f.len);
	if (!n)
		return -1;
	n->options = r->sub.options;
	n->sub_id = r->sub.sub_id;
	n->len = (uint16_t)f.len;
	memcpy(n->filter, f.ptr, f.len);
	struct rsub **tail = &rs->subs;
	while (*tail)
		tail = &(*tail)->next;
	n->next = NULL;
	*tail = n;
	return 0;
}

static int apply_msg(struct recovery *rc, const struct journal_record *r)
{
	if (r->msg.id <= rc->top_msg &&
	    (rc->last_msg = rmsg_find(rc, r->msg.id)))
		return 0; /* the same message, logged again */
	if (r->msg.id > rc->top_msg)
		rc->top_msg = r->msg.id;
	struct rmsg *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	e->id = r->msg.id;
	e->created_wall_ms = r->msg.created_wall_ms;
	e->m = msg_new(r->msg.topic.ptr, (uint16_t)r->msg.topic.len,
		       r->msg.payload.ptr, r->msg.payload.len, r->msg.qos,
		       r->msg.retain, r->msg.props.ptr, r->msg.props.len);
	if (!e->m || htab_insert(&rc->msgs, &e->link, u64_hash(e->id)) < 0) {
		if (e->m)
			msg_unref(e->m);
		free(e);
		return -1;
	}
	e->m->expiry_s = r->msg.expiry_s;
	atomic_store(&e->m->log_id, e->id);
	rc->last_msg = e;
	if ((e->id & ((1ull << 56) - 1)) > rc->max_msg)
		rc->max_msg = e->id & ((1ull << 56) - 1);
	return 0;
}

static bool rout_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	return !memcmp(l + 1, key, 16);
}

_Static_assert(offsetof(struct rout, skey) == sizeof(struct htab_link) &&
		       offsetof(struct rout, msg_id) == sizeof(struct htab_link) + 8,
	       "key after link");

static struct rout *rout_find(struct recovery *rc, const struct rsess *rs,
			      uint64_t msg_id)
{
	uint64_t key[2] = {rs->key, msg_id};
	return htab_entry(htab_find(&rc->outs, hash_bytes(key, 16), key, 16,
				    rout_eq_cb),
			  struct rout, link);
}

/* Takes o (calloc'ed, msg_id set) onto the end of rs's queue; -1 when the
 * table cannot grow (o is freed). */
static int rout_append(struct recovery *rc, struct rsess *rs, struct rout *o)
{
	o->skey = rs->key;
	if (htab_insert(&rc->outs, &o->link, hash_bytes(&o->skey, 16)) < 0) {
		free(o);
		return -1;
	}
	if (o->msg_id > rs->top_out)
		rs->top_out = o->msg_id;
	o->next = NULL;
	o->pprev = rs->out_tail;
	*rs->out_tail = o;
	rs->out_tail = &o->next;
	return 0;
}

static struct rmsg *last_msg_if(const struct recovery *rc, uint64_t id)
{
	return rc->last_msg && rc->last_msg->id == id ? rc->last_msg : NULL;
}

static int apply_queue(struct recovery *rc, struct rsess *rs,
		       const struct journal_record *r)
{
	if (r->queue.msg_id <= rs->top_out &&
	    rout_find(rc, rs, r->queue.msg_id))
		return 0;
	struct rout *o = calloc(1, sizeof(*o));
	if (!o)
		return -1;
	o->msg_id = r->queue.msg_id;
	o->rm = last_msg_if(rc, o->msg_id);
	o->d.qos = r->queue.qos;
	o->d.retain = r->queue.retain;
	o->d.nsub = r->queue.nsub;
	memcpy(o->d.sub, r->queue.sub, sizeof(o->d.sub));
	return rout_append(rc, rs, o);
}

static int apply_out(struct recovery *rc, struct rsess *rs,
		     const struct journal_record *r)
{
	rs->last_pid = r->out.pid;
	struct rout *o = rout_find(rc, rs, r->out.msg_id);
	if (!o && r->out.state == JOURNAL_WAIT_PUBCOMP) {
		/* Only PUBCOMP is left: the message itself is not needed. */
		if (!(o = calloc(1, sizeof(*o))))
			return -1;
		o->msg_id = r->out.msg_id;
		o->d.qos = 2;
		if (rout_append(rc, rs, o) < 0)
			return -1;
	}
	if (o) {
		o->pid = r->out.pid;
		o->state = r->out.state;
	}
	return 0;
}

static void apply_done(struct recovery *rc, struct rsess *rs, uint64_t msg_id)
{
	struct rout *o = rout_find(rc, rs, msg_id);
	if (!o)
		return;
	htab_remove(&rc->outs, &o->link);
	*o->pprev = o->next;
	if (o->next)
		o->next->pprev = o->pprev;
	else
		rs->out_tail = o->pprev;
	free(o);
}

static int apply_qos2(struct rsess *rs, const struct journal_record *r, bool add)
{
	uint16_t pid = add ? r->qos2_in.pid : r->qos2_rel.pid;
	for (struct rqos2 **pp = &rs->qos2; *pp; pp = &(*pp)->next)
		if ((*pp)->pid == pid) {
			struct rqos2 *old = *pp;
			*pp = old->next;
			free(old);
			break;
		}
	if (!add)
		return 0;
	struct rqos2 *n = malloc(sizeof(*n));
	if (!n)
		return -1;
	n->pid = pid;
	n->msg_id = r->qos2_in.msg_id;
	n->next = rs->qos2;
	rs->qos2 = n;
	return 0;
}

static int apply_retain(struct recovery *rc, const struct journal_record *r)
{
	struct journal_bytes t = r->retain.topic;
	uint64_t h = hash_bytes(t.ptr, t.len);
	struct rretain *e = htab_entry(htab_find(&rc->retained, h, t.ptr, t.len,
						 topic_eq_cb),
				       struct rretain, link);
	if (!r->retain.msg_id) {
		if (e) {
			htab_remove(&rc->retained, &e->link);
			free(e);
		}
		return 0;
	}
	if (!e) {
		if (!(e = malloc(sizeof(*e) + t.len)))
			return -1;
		e->len = (uint16_t)t.len;
		memcpy(e->topic, t.ptr, t.len);
		if (htab_insert(&rc->retained, &e->link, h) < 0) {
			free(e);
			return -1;
		}
	}
	e->msg_id = r->retain.msg_id;
	e->rm = last_msg_if(rc, e->msg_id);
	struct rmsg *rm = !r->retain.has_source ? NULL
			  : e->rm ? e->rm : rmsg_find(rc, e->msg_id);
	if (rm && !rm->m->source) {
		const struct journal_bytes id = r->retain.source_client_id;
		const struct journal_bytes un = r->retain.source_username;
		rm->m->source = msg_source_new(
			r->retain.source_listener, (const char *)id.ptr, id.len,
			r->retain.source_has_username ? (const char *)un.ptr : NULL,
			un.len);
		if (!rm->m->source)
			return -1;
	}
	return 0;
}

/* One record; records about a session that is not (yet) known are
 * dropped: a snapshot of it further on restates them. */
static int apply(struct recovery *rc, const struct journal_record *r)
{
	uint64_t key = 0;
	switch (r->type) {
	case JOURNAL_SESSION:
		return apply_session(rc, r);
	case JOURNAL_MSG:
		return apply_msg(rc, r);
	case JOURNAL_RETAIN:
		return apply_retain(rc, r);
	case JOURNAL_SNAPSHOT_END:
		return 0;
	case JOURNAL_SESSION_END: key = r->session_end.key; break;
	case JOURNAL_SUB: key = r->sub.key; break;
	case JOURNAL_UNSUB: key = r->unsub.key; break;
	case JOURNAL_QUEUE: key = r->queue.key; break;
	case JOURNAL_OUT: key = r->out.key; break;
	case JOURNAL_DONE: key = r->done.key; break;
	case JOURNAL_QOS2_IN: key = r->qos2_in.key; break;
	case JOURNAL_QOS2_REL: key = r->qos2_rel.key; break;
	case JOURNAL_WILL: key = r->will.key; break;
	}
	struct rsess *rs = rc->last_sess && rc->last_sess->key == key
				   ? rc->last_sess : rsess_find(rc, key);
	if (!rs) {
		rc->unresolved++;
		return 0;
	}
	rc->last_sess = rs;
	switch (r->type) {
	case JOURNAL_SESSION_END:
		rc->last_sess = NULL;
		htab_remove(&rc->sessions, &rs->link);
		rsess_free_items(rs, &rc->outs);
		rsess_free(&rs->link);
		return 0;
	case JOURNAL_SUB:
		return apply_sub(rs, r, true);
	case JOURNAL_UNSUB:
		return apply_sub(rs, r, false);
	case JOURNAL_QUEUE:
		return apply_queue(rc, rs, r);
	case JOURNAL_OUT:
		return apply_out(rc, rs, r);
	case JOURNAL_DONE:
		apply_done(rc, rs, r->done.msg_id);
		return 0;
	case JOURNAL_QOS2_IN:
		return apply_qos2(rs, r, true);
	case JOURNAL_QOS2_REL:
		return apply_qos2(rs, r, false);
	case JOURNAL_WILL:
		rs->will_msg = r->will.msg_id;
		rs->will_at_wall_ms = r->will.at_wall_ms;
		return 0;
	}
	return 0;
}

/* Reads one log file into rc; a damaged file loses what is damaged. */
static int recover_file(struct recovery *rc, const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		log_msg(KITE_LOG_ERR, "Persistence: cannot read %s: %s", path,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return 0; /* what else there is still counts */
	}
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len ? len : 1);
	ssize_t got = 0;
	while (buf && (size_t)got < len) {
		ssize_t n = pread(fd, buf + got, len - (size_t)got, got);
		if (n <= 0)
			break;
		got += n;
	}
	close(fd);
	if (!buf || (size_t)got != len) {
		log_msg(KITE_LOG_ERR, "Persistence: cannot read %s: %s", path,
			buf ? strerror(errno) : "out of memory");
		free(buf);
		return buf ? 0 : -1;
	}
	uint32_t shard;
	uint64_t gen;
	const char *why;
	if (journal_header_check(buf, len, &shard, &gen, &why) < 0) {
		log_msg(KITE_LOG_ERR, "Persistence: %s skipped: %s", path, why);
		free(buf);
		return 0;
	}
	struct journal_reader rd;
	journal_reader_init(&rd, buf + JOURNAL_HEADER_LEN, len - JOURNAL_HEADER_LEN);
	struct journal_record r;
	int rcode = 0;
	while (rcode == 0 && journal_next(&rd, &r) == 1) {
		rc->records++;
		rcode = apply(rc, &r);
	}
	if (rd.skipped)
		log_msg(KITE_LOG_WARNING, "Persistence: %s: %u damaged records "
			"(%llu bytes) skipped", path, rd.skipped,
			(unsigned long long)rd.skipped_bytes);
	if (rd.torn)
		log_msg(KITE_LOG_WARNING, "Persistence: %s: torn tail of %zu "
			"bytes at offset %zu cut off (a write the stop interrupted)",
			path, rd.torn_bytes, rd.torn_at + JOURNAL_HEADER_LEN);
	rc->files++;
	free(buf);
	if (rcode < 0)
		log_msg(KITE_LOG_ERR, "Persistence: out of memory reading %s", path);
	return rcode;
}

struct log_file {
	unsigned shard;
	uint64_t gen;
	char name[64];
};

static int log_file_cmp(const void *a, const void *b)
{
	const struct log_file *x = a, *y = b;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return x->gen < y->gen ? -1 : x->gen > y->gen;
}

/* kite's logs in the directory, by shard then generation. */
static int list_logs(struct log_file **out, size_t *n, uint64_t *max_gen)
{
	DIR *d = opendir(persist_dir);
	*out = NULL;
	*n = 0;
	*max_gen = 0;
	if (!d)
		return -1;
	struct dirent *de;
	size_t cap = 0;
	while ((de = readdir(d))) {
		unsigned shard;
		unsigned long long gen;
		char tail[8];
		if (sscanf(de->d_name, "shard-%u.%llu.%7s", &shard, &gen, tail) != 3 ||
		    strcmp(tail, "log") || strlen(de->d_name) >= 64)
			continue;
		if (*n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct log_file *nf = realloc(*out, sizeof(*nf) * ncap);
			if (!nf) {
				closedir(d);
				return -1;
			}
			*out = nf;
			cap = ncap;
		}
		(*out)[*n] = (struct log_file){shard, gen, ""};
		snprintf((*out)[*n].name, sizeof((*out)[*n].name), "%s", de->d_name);
		if (gen > *max_gen)
			*max_gen = gen;
		(*n)++;
	}
	closedir(d);
	if (*n)
		qsort(*out, *n, sizeof(**out), log_file_cmp);
	return 0;
}

static bool rsess_id_eq_cb(const struct htab_link *l, const void *key,
			   size_t len);

/* ---- importing Mosquitto's database --------------------------------------- */

/* Turns Mosquitto 2.0's mosquitto.db into the same recovery state kite's
 * own records give (core/mosqdb.c reads it). Sessions get fresh keys;
 * usernames are not taken (2.0.11 writes stale ones; the next CONNECT
 * sets the identity anyway). */
struct mimport {
	struct recovery *rc;
	struct htab by_id; /* client id -> rsess */
	uint64_t now_wall;
	uint32_t msgs, retained, clients, subs, queued, skipped;
};

static struct rsess *mimport_session(struct mimport *mi, struct mqtt_bytes id)
{
	uint64_t h = hash_bytes(id.ptr, id.len);
	return htab_entry(htab_find(&mi->by_id, h, id.ptr, id.len, rsess_id_eq_cb),
			  struct rsess, by_id);
}

static int mimport_msg_cb(void *ctx, const struct mosqdb_msg *m)
{
	struct mimport *mi = ctx;
	struct journal_record r = {.type = JOURNAL_MSG};
	r.msg.id = m->store_id;
	r.msg.qos = m->qos;
	r.msg.retain = m->retain;
	r.msg.topic = jb(m->topic.ptr, m->topic.len);
	r.msg.payload = jb(m->payload.ptr, m->payload.len);
	r.msg.props = jb(m->props.raw.ptr, m->props.raw.len);
	r.msg.created_wall_ms = mi->now_wall;
	if (m->expiry_time > 0) {
		int64_t left = m->expiry_time - (int64_t)(mi->now_wall / 1000);
		r.msg.expiry_s = left > 0 ? (uint32_t)left : 1;
	}
	mi->msgs++;
	return apply_msg(mi->rc, &r);
}

static int mimport_retain_cb(void *ctx, const struct mosqdb_retain *m)
{
	struct mimport *mi = ctx;
	struct rmsg *e = rmsg_find(mi->rc, m->store_id);
	if (!e) {
		mi->skipped++;
		return 0;
	}
	struct journal_record r = {.type = JOURNAL_RETAIN};
	r.retain.msg_id = m->store_id;
	r.retain.topic = jb(msg_topic(e->m), e->m->topic_len);
	mi->retained++;
	return apply_retain(mi->rc, &r);
}

static int mimport_client_cb(void *ctx, const struct mosqdb_client *m)
{
	struct mimport *mi = ctx;
	if (mimport_session(mi, m->client_id))
		return 0;
	struct journal_record r = {.type = JOURNAL_SESSION};
	r.session.key = ++mi->rc->max_key;
	r.session.expiry_s = m->session_expiry_interval;
	r.session.protocol = m->session_expiry_interval == UINT32_MAX ? 4 : 5;
	r.session.client_id = jb(m->client_id.ptr, m->client_id.len);
	r.session.last_pid = m->last_mid; /* packet ids go on from it */
	/* Offline since Mosquitto saved it (its expiry time says when it
	 * would have ended). */
	r.session.offline_wall_ms = mi->now_wall;
	if (m->session_expiry_time > 0 && m->session_expiry_interval != UINT32_MAX) {
		int64_t since = m->session_expiry_time -
				(int64_t)m->session_expiry_interval;
		r.session.offline_wall_ms = since > 0 ? (uint64_t)since * 1000u : 1;
	}
	if (apply_session(mi->rc, &r) < 0)
		return -1;
	struct rsess *rs = rsess_find(mi->rc, r.session.key);
	uint64_t h = hash_bytes(rs->client_id, rs->id_len);
	if (htab_insert(&mi->by_id, &rs->by_id, h) < 0)
		return -1;
	mi->clients++;
	return 0;
}

static int mimport_sub_cb(void *ctx, const struct mosqdb_sub *m)
{
	struct mimport *mi = ctx;
	struct rsess *rs = mimport_session(mi, m->client_id);
	if (!rs) {
		mi->skipped++;
		return 0;
	}
	struct journal_record r = {.type = JOURNAL_SUB};
	r.sub.options = (uint8_t)((m->qos & SUB_QOS_MASK) |
				  (m->no_local ? SUB_NO_LOCAL : 0) |
				  (m->retain_as_published ? SUB_RETAIN_AS_PUBLISHED : 0));
	r.sub.sub_id = m->identifier;
	r.sub.filter = jb(m->filter.ptr, m->filter.len);
	mi->subs++;
	return apply_sub(rs, &r, true);
}

static int mimport_client_msg_cb(void *ctx, const struct mosqdb_client_msg *m)
{
	struct mimport *mi = ctx;
	struct rsess *rs = mimport_session(mi, m->client_id);
	if (!rs || !rmsg_find(mi->rc, m->store_id)) {
		mi->skipped++;
		return 0;
	}
	struct journal_record r;
	if (m->direction == MOSQDB_DIR_IN) {
		if (m->state != MOSQDB_STATE_WAIT_FOR_PUBREL &&
		    m->state != MOSQDB_STATE_SEND_PUBREC)
			return 0;
		r = (struct journal_record){.type = JOURNAL_QOS2_IN};
		r.qos2_in.msg_id = m->store_id;
		r.qos2_in.pid = m->mid;
		mi->queued++;
		return r.qos2_in.pid ? apply_qos2(rs, &r, true) : 0;
	}
	if (m->qos == 0)
		return 0;
	r = (struct journal_record){.type = JOURNAL_QUEUE};
	r.queue.msg_id = m->store_id;
	r.queue.qos = m->qos;
	r.queue.retain = m->retain;
	if (m->props.subscription_identifier) {
		r.queue.nsub = 1;
		r.queue.sub[0] = m->props.subscription_identifier;
	}
	if (apply_queue(mi->rc, rs, &r) < 0)
		return -1;
	mi->queued++;
	uint8_t state = m->state == MOSQDB_STATE_WAIT_FOR_PUBACK ? JOURNAL_WAIT_PUBACK
			: m->state == MOSQDB_STATE_WAIT_FOR_PUBREC ? JOURNAL_WAIT_PUBREC
			: (m->state == MOSQDB_STATE_RESEND_PUBREL ||
			   m->state == MOSQDB_STATE_WAIT_FOR_PUBCOMP) ? JOURNAL_WAIT_PUBCOMP
			: 0;
	if (!state || !m->mid)
		return 0; /* queued: it gets a packet id when it is sent */
	r = (struct journal_record){.type = JOURNAL_OUT};
	r.out.msg_id = m->store_id;
	r.out.pid = m->mid;
	r.out.state = state;
	return apply_out(mi->rc, rs, &r);
}

/* persistence_location/persistence_file: Mosquitto's database. */
static void persist_file_path(const struct kite_config *cfg,
			      char out[PERSIST_FILE_MAX])
{
	const char *loc = cfg->persistence_location[0] ? cfg->persistence_location
						       : ".";
	snprintf(out, PERSIST_FILE_MAX, "%s%s%s", loc,
		 loc[strlen(loc) - 1] == '/' ? "" : "/",
		 cfg->persistence_file);
}

/* Mosquitto's database, when kite has no logs of its own yet. 0 (also
 * when there is none, or it is damaged: the log says what was taken), or
 * -1 out of memory. */
static int import_mosquitto(struct recovery *rc, const struct kite_config *cfg)
{
	char path[PERSIST_FILE_MAX];
	persist_file_path(cfg, path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	struct stat st;
	uint8_t *buf = NULL;
	size_t len = 0;
	if (fstat(fd, &st) == 0 && (buf = malloc(st.st_size ? (size_t)st.st_size : 1))) {
		while (len < (size_t)st.st_size) {
			ssize_t n = pread(fd, buf + len, (size_t)st.st_size - len, (off_t)len);
			if (n <= 0)
				break;
			len += (size_t)n;
		}
	}
	close(fd);
	if (!buf)
		return -1;
	struct mimport mi = {.rc = rc, .now_wall = wall_ms()};
	struct mosqdb_visitor v = {
		.msg_cb = mimport_msg_cb,
		.retain_cb = mimport_retain_cb,
		.client_cb = mimport_client_cb,
		.sub_cb = mimport_sub_cb,
		.client_msg_cb = mimport_client_msg_cb,
	};
	struct mosqdb_status ms;
	int r = mosqdb_read(buf, len, &v, &mi, &ms);
	free(buf);
	htab_fini(&mi.by_id, unlink_cb);
	if (r == MOSQDB_STOPPED)
		return -1; /* a callback ran out of memory */
	if (r != MOSQDB_OK)
		log_msg(KITE_LOG_WARNING, "Persistence: %s: %s: %s; what came "
			"before it is imported", path, mosqdb_rc_name(r), ms.err);
	log_msg(KITE_LOG_NOTICE, "Persistence: imported Mosquitto's %s (format "
		"%u): %u messages, %u retained, %u sessions, %u subscriptions, "
		"%u queued or in flight, %u references skipped; the file is "
		"left as it was.", path, ms.version, mi.msgs, mi.retained,
		mi.clients, mi.subs, mi.queued, mi.skipped);
	return 0;
}

/* ---- from recovery to the running broker ---------------------------------- */

static uint64_t mono_from_wall(uint64_t now_mono, uint64_t now_wall,
			       uint64_t wall)
{
	if (wall >= now_wall)
		return now_mono + (wall - now_wall);
	uint64_t ago = now_wall - wall;
	return ago < now_mono ? now_mono - ago : 0;
}

/* Whether a session the files hold has ended while kite was down. */
static bool rsess_expired(const struct broker *b, const struct rsess *rs,
			  uint64_t now_wall, uint64_t *left_ms)
{
	*left_ms = UINT64_MAX;
	/* Connected when kite stopped: offline from now. */
	uint64_t since = rs->offline_wall_ms ? rs->offline_wall_ms : now_wall;
	uint64_t span_s = rs->expiry_s;
	if (span_s == UINT32_MAX) {
		span_s = b->cfg->persistent_client_expiration_s;
		if (!span_s)
			return false;
	}
	uint64_t end = since + span_s * 1000u;
	if (end <= now_wall)
		return true;
	*left_ms = end - now_wall;
	return false;
}

struct build {
	struct broker *b;
	struct recovery *rc;
	uint64_t now_mono, now_wall;
	uint32_t sessions, messages, dropped_expired, dropped_dup, dropped_bridge;
	uint32_t unreleased;
	/* Incoming QoS 2 messages whose release was not durable: copies
	 * routed before the stop are dropped (the publisher sends PUBREL
	 * again, and it is routed once). */
	struct htab held;
};

struct held_id {
	struct htab_link link;
	uint64_t id;
};

_Static_assert(offsetof(struct held_id, id) == sizeof(struct htab_link), "key after link");

static bool build_is_unreleased(struct build *bd, uint64_t id)
{
	return htab_find(&bd->held, u64_hash(id), &id, 8, u64_eq_cb) != NULL;
}

static void build_collect_unreleased(struct build *bd)
{
	struct recovery *rc = bd->rc;
	for (size_t i = 0; rc->sessions.bucket && i <= rc->sessions.mask; i++)
		for (struct htab_link *l = rc->sessions.bucket[i]; l; l = l->next) {
			struct rsess *rs = htab_entry(l, struct rsess, link);
			for (struct rqos2 *q = rs->qos2; q; q = q->next) {
				if (build_is_unreleased(bd, q->msg_id))
					continue;
				struct held_id *h = malloc(sizeof(*h));
				if (!h)
					continue;
				h->id = q->msg_id;
				if (htab_insert(&bd->held, &h->link, u64_hash(h->id)) < 0)
					free(h);
			}
		}
}

static void held_id_free(struct htab_link *l)
{
	free(htab_entry(l, struct held_id, link));
}

static struct msg *build_msg(struct build *bd, uint64_t id,
			     struct rmsg *hint)
{
	struct rmsg *e = hint ? hint : rmsg_find(bd->rc, id);
	if (!e) {
		bd->rc->unresolved++;
		return NULL;
	}
	e->m->created_ms = mono_from_wall(bd->now_mono, bd->now_wall,
					  e->created_wall_ms);
	return e->m;
}

static void build_will(struct build *bd, struct session *ss,
		       const struct rsess *rs)
{
	struct msg *m = rs->will_msg ? build_msg(bd, rs->will_msg, NULL) : NULL;
	struct will *w = m ? calloc(1, sizeof(*w)) : NULL;
	if (!w)
		return;
	w->msg = msg_ref(m);
	w->qos = m->qos;
	w->retain = m->retain;
	ss->delayed_will = w;
	ss->will_at_ms = mono_from_wall(bd->now_mono, bd->now_wall,
					rs->will_at_wall_ms);
	session_timer_at(ss->shard, ss->will_at_ms);
}

/* The configured bridge whose local side a logged session ("\0" + its
 * local_clientid) was, or -1 when none is now (or it keeps a clean local
 * session, local_cleansession true). */
static int bridge_of_session(const struct kite_config *cfg,
			     const struct rsess *rs)
{
	for (unsigned i = 0; i < cfg->bridge_count; i++) {
		const struct kite_bridge_cfg *k = &cfg->bridges[i];
		bool clean = k->local_cleansession < 0 ? k->cleansession
						       : k->local_cleansession;
		if (!clean && strlen(k->local_clientid) == rs->id_len - 1u &&
		    !memcmp(k->local_clientid, rs->client_id + 1, rs->id_len - 1u))
			return (int)i;
	}
	return -1;
}

static void build_session(struct build *bd, struct rsess *rs)
{
	struct broker *b = bd->b;
	uint64_t left_ms = UINT64_MAX;
	const char *id = rs->client_id;
	uint16_t id_len = rs->id_len;
	int bridge = -1;
	if (id_len && !id[0]) {
		bridge = bridge_of_session(b->cfg, rs);
		if (bridge < 0) {
			bd->dropped_bridge++;
			log_msg(KITE_LOG_WARNING, "Persistence: the local session "
				"of bridge client id %.*s is not kept: no bridge "
				"with a persistent local session has that "
				"local_clientid now", (int)id_len - 1, id + 1);
			return;
		}
		id++;
		id_len--;
		/* A bridge's session does not expire: it is the broker's. */
	} else if (rsess_expired(b, rs, bd->now_wall, &left_ms)) {
		bd->dropped_expired++;
		return;
	}
	/* A bridge runs on shard (its index % shards), its session too. */
	struct shard *s = &b->shards[bridge >= 0
					     ? (unsigned)bridge % b->nshards
					     : hash_bytes(id, id_len) % b->nshards];
	struct session *ss = session_revive(s, rs->key, id, id_len,
					    rs->expiry_s);
	if (ss && bridge >= 0) {
		ss->of_bridge = true;
		b->bridge_recovered[bridge] = ss->id;
	}
	if (!ss || (bridge < 0 && session_register(b, ss) < 0)) {
		log_msg(KITE_LOG_ERR, "Persistence: out of memory restoring "
			"session %s", rs->client_id);
		if (ss)
			session_destroy(ss);
		return;
	}
	ss->protocol = rs->protocol;
	ss->next_pid = rs->last_pid;
	session_set_identity(ss, rs->listener, rs->username);
	for (struct rsub *r = rs->subs; r; r = r->next)
		if (session_add_sub(ss, r->filter, r->len, r->options, r->sub_id,
				    NULL) < 0)
			log_msg(KITE_LOG_ERR, "Persistence: session %s: "
				"subscription %.*s not restored", rs->client_id,
				(int)r->len, r->filter);
	for (struct rout *o = rs->out; o; o = o->next) {
		if (o->state != JOURNAL_WAIT_PUBCOMP &&
		    build_is_unreleased(bd, o->msg_id)) {
			bd->unreleased++;
			continue;
		}
		struct msg *m = o->state == JOURNAL_WAIT_PUBCOMP
					? NULL : build_msg(bd, o->msg_id, o->rm);
		if (!m && o->state != JOURNAL_WAIT_PUBCOMP)
			continue;
		uint8_t st = o->state == JOURNAL_WAIT_PUBACK ? INFLIGHT_WAIT_PUBACK
			     : o->state == JOURNAL_WAIT_PUBREC ? INFLIGHT_WAIT_PUBREC
			     : INFLIGHT_WAIT_PUBCOMP;
		if (session_restore_msg(ss, m, o->msg_id, &o->d, o->pid, st) == 0)
			bd->messages++;
	}
	for (struct rqos2 *q = rs->qos2; q; q = q->next) {
		struct msg *m = build_msg(bd, q->msg_id, NULL);
		if (m && session_qos2_add(ss, q->pid, msg_ref(m)) < 0)
			msg_unref(m);
	}
	build_will(bd, ss, rs);
	if (left_ms != UINT64_MAX) {
		ss->expire_at_ms = bd->now_mono + left_ms;
		session_timer_at(s, ss->expire_at_ms);
	}
	bd->sessions++;
}

/* Two sessions of one client id can both be in the files (a takeover
 * across shards that a stop interrupted): the newer (higher key) wins. */
static bool rsess_id_eq_cb(const struct htab_link *l, const void *key,
			   size_t len)
{
	const struct rsess *rs = htab_entry(l, const struct rsess, by_id);
	return rs->id_len == len && !memcmp(rs->client_id, key, len);
}

static void build_all(struct build *bd)
{
	struct recovery *rc = bd->rc;
	struct htab by_id = {0};
	build_collect_unreleased(bd);
	for (size_t i = 0; rc->sessions.bucket && i <= rc->sessions.mask; i++)
		for (struct htab_link *l = rc->sessions.bucket[i]; l; l = l->next) {
			struct rsess *rs = htab_entry(l, struct rsess, link);
			uint64_t h = hash_bytes(rs->client_id, rs->id_len);
			struct rsess *o = htab_entry(htab_find(&by_id, h, rs->client_id,
							       rs->id_len, rsess_id_eq_cb),
						     struct rsess, by_id);
			if (o && o->key > rs->key) {
				rs->superseded = true;
			} else {
				if (o) {
					o->superseded = true;
					htab_remove(&by_id, &o->by_id);
				}
				if (htab_insert(&by_id, &rs->by_id, h) < 0)
					rs->superseded = true; /* out of memory */
			}
		}
	for (size_t i = 0; rc->sessions.bucket && i <= rc->sessions.mask; i++)
		for (struct htab_link *l = rc->sessions.bucket[i]; l; l = l->next) {
			struct rsess *rs = htab_entry(l, struct rsess, link);
			if (rs->superseded)
				bd->dropped_dup++;
			else
				build_session(bd, rs);
		}
	htab_fini(&by_id, unlink_cb);
	htab_fini(&bd->held, held_id_free);
	for (size_t i = 0; rc->retained.bucket && i <= rc->retained.mask; i++)
		for (struct htab_link *l = rc->retained.bucket[i]; l; l = l->next) {
			struct rretain *r = htab_entry(l, struct rretain, link);
			struct msg *m = build_msg(bd, r->msg_id, r->rm);
			if (m && retain_set(bd->b->retained, r->topic, r->len,
					    msg_ref(m)) < 0)
				msg_unref(m);
		}
}

/* An empty Mosquitto 2.0 database (format 6, a CFG chunk and nothing
 * else): what kite leaves at persistence_file when there was none, so
 * that deleting it resets kite as it resets Mosquitto, and Mosquitto
 * still starts on it. Written whole, synced, then renamed in place. */
static int persist_file_create(const char *path)
{
	static const uint8_t empty_db[] = {
		0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o',
		' ', 'd', 'b',		/* magic */
		0, 0, 0, 0,		/* CRC, unused */
		0, 0, 0, 6,		/* format version */
		0, 0, 0, 1, 0, 0, 0, 16, /* CFG chunk, 16 bytes */
		0, 0, 0, 0, 0, 0, 0, 0, /* last store id */
		1, 8, 0, 0, 0, 0, 0, 0, /* clean shutdown, 8-byte ids, padding */
	};
	char tmp[PERSIST_DIR_MAX];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, empty_db, sizeof(empty_db), 0) < 0 ||
	    fsync(fd) < 0 || rename(tmp, path) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot create %s: %s",
			path, strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		return -1;
	}
	close(fd);
	char dir[PERSIST_FILE_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	int dfd = open(slash ? (dir[0] ? dir : "/") : ".",
		       O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

/* kite's directory is persistence_file's name with ".kite": another
 * persistence_file is another state, as for Mosquitto. Before, it was
 * persistence_location/kite: such a directory is taken over (renamed)
 * once; *moved says so. */
static int persist_mkdir(const struct kite_config *cfg, bool *moved)
{
	const char *loc = cfg->persistence_location[0] ? cfg->persistence_location
						       : ".";
	char file[PERSIST_FILE_MAX];
	persist_file_path(cfg, file);
	snprintf(persist_dir, sizeof(persist_dir), "%s.kite", file);
	*moved = false;
	struct stat st;
	if (stat(persist_dir, &st) < 0 && errno == ENOENT) {
		char old[KITE_PATH_MAX + 8];
		snprintf(old, sizeof(old), "%s%skite", loc,
			 loc[strlen(loc) - 1] == '/' ? "" : "/");
		if (stat(old, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (rename(old, persist_dir) < 0) {
				log_msg(KITE_LOG_ERR, "Error: persistence: cannot "
					"rename %s to %s: %s", old, persist_dir,
					strerror(errno));
				return -1;
			}
			log_msg(KITE_LOG_NOTICE, "Persistence: %s (an earlier "
				"kite's) is now %s.", old, persist_dir);
			*moved = true;
		}
	}
	if (mkdir(persist_dir, 0700) < 0 && errno != EEXIST) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot create %s: %s "
			"(persistence_location %s)", persist_dir, strerror(errno), loc);
		return -1;
	}
	if (access(persist_dir, W_OK) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: %s is not writable: %s",
			persist_dir, strerror(errno));
		return -1;
	}
	/* One kite per directory: another one (other ports, same
	 * persistence_location) would rewrite the files under it. Held
	 * until exit; the kernel drops it when the process dies. */
	char lock[sizeof(persist_dir) + 8];
	snprintf(lock, sizeof(lock), "%s/lock", persist_dir);
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: %s is in use by another "
			"kite (%s)", persist_dir,
			fd < 0 ? strerror(errno) : "its lock is held");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return 0;
}

/* kite's logs stand for persistence_file: with the file gone (deleted to
 * start afresh, as Mosquitto's users do), they go too, before a new empty
 * file says the directory is current. In that order a crash between the
 * steps still starts afresh. */
static int persist_reset_if_file_gone(const struct kite_config *cfg,
				      bool moved, struct log_file *files,
				      size_t *nfiles, bool *created)
{
	char file[PERSIST_FILE_MAX];
	persist_file_path(cfg, file);
	*created = false;
	if (access(file, F_OK) == 0)
		return 0;
	if (*nfiles && !moved) {
		log_msg(KITE_LOG_NOTICE, "Persistence: %s is gone: starting "
			"afresh, the logs in %s are removed.", file, persist_dir);
		char path[sizeof(persist_dir) + 72];
		for (size_t i = 0; i < *nfiles; i++) {
			snprintf(path, sizeof(path), "%s/%s", persist_dir,
				 files[i].name);
			if (unlink(path) < 0 && errno != ENOENT) {
				log_msg(KITE_LOG_ERR, "Error: persistence: cannot "
					"remove %s: %s", path, strerror(errno));
				return -1;
			}
		}
		*nfiles = 0;
		fsync_dir();
	}
	if (persist_file_create(file) < 0)
		return -1;
	*created = true;
	return 0;
}

/* jemalloc (release builds) returns freed pages to the system only as
 * later allocations pass its decay clock, which an idle broker never
 * does. Weak: absent under sanitizers and other allocators. */
extern int mallctl(const char *name, void *oldp, size_t *oldlenp,
		   void *newp, size_t newlen) __attribute__((weak));

static void release_recovery_heap(void)
{
	/* "arena.<MALLCTL_ARENAS_ALL>.purge": every arena. The recovery
	 * tables and the first snapshot of a large state are hundreds of MiB
	 * that would otherwise stay resident. */
	if (mallctl)
		(void)mallctl("arena.4096.purge", NULL, NULL, NULL, 0);
}

int persist_start(struct broker *b)
{
	const struct kite_config *cfg = b->cfg;
	if (!cfg->persistence)
		return 0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	bool moved, created;
	if (persist_mkdir(cfg, &moved) < 0)
		return -1;
	struct log_file *files;
	size_t nfiles;
	uint64_t max_gen;
	if (list_logs(&files, &nfiles, &max_gen) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot list %s: %s",
			persist_dir, strerror(errno));
		return -1;
	}
	if (persist_reset_if_file_gone(cfg, moved, files, &nfiles, &created) < 0) {
		free(files);
		return -1;
	}
	struct recovery rc = {0};
	int rcode = 0;
	char path[sizeof(persist_dir) + 72];
	for (size_t i = 0; i < nfiles && rcode == 0; i++) {
		snprintf(path, sizeof(path), "%s/%s", persist_dir, files[i].name);
		rcode = recover_file(&rc, path);
	}
	/* First start on a Mosquitto data directory: its database. */
	if (!nfiles && !created && rcode == 0)
		rcode = import_mosquitto(&rc, cfg);
	if (rcode == 0 && cfg->bridge_count &&
	    !(b->bridge_recovered = calloc(cfg->bridge_count,
					   sizeof(*b->bridge_recovered))))
		rcode = -1;
	if (rcode < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: out of memory while "
			"recovering: not starting (nothing was changed on disk)");
		free(files);
		return -1;
	}
	/* Main builds the shards' state before they run; the tries and
	 * the retained store want an RCU reader (writer) thread. */
	rcu_register_thread();
	struct build bd = {.b = b, .rc = &rc, .now_wall = wall_ms()};
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	bd.now_mono = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
	atomic_store(&b->next_session_id, rc.max_key);
	build_all(&bd);
	/* The queues' index first: the sessions free the entries. */
	htab_fini(&rc.outs, rout_unindex);
	htab_fini(&rc.sessions, rsess_free);
	htab_fini(&rc.msgs, rmsg_free);
	htab_fini(&rc.retained, rretain_free);
	for (unsigned i = 0; i < b->nshards && rcode == 0; i++) {
		b->shards[i].now_ms = bd.now_mono;
		rcode = shard_log_open(&b->shards[i], max_gen + 1, rc.max_msg);
	}
	rcu_unregister_thread();
	release_recovery_heap();
	if (rcode < 0) {
		free(files);
		return -1;
	}
	fsync_dir();
	/* The new generation is durable: the old files go. */
	for (size_t i = 0; i < nfiles; i++) {
		snprintf(path, sizeof(path), "%s/%s", persist_dir, files[i].name);
		if (unlink(path) < 0)
			log_msg(KITE_LOG_WARNING, "Persistence: cannot remove %s: %s",
				path, strerror(errno));
	}
	fsync_dir();
	free(files);
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
		    (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	char every[48];
	snprintf(every, sizeof(every), "every %u ms",
		 (unsigned)cfg->persistence_sync_ms);
	log_msg(KITE_LOG_NOTICE, "Persistence: %s: %u records from %u files, "
		"%u sessions (%u expired, %u superseded), %u queued messages, "
		"%zu retained, in %.0f ms; syncing %s.", persist_dir, rc.records,
		rc.files, bd.sessions, bd.dropped_expired, bd.dropped_dup,
		bd.messages, retain_count(b->retained), ms,
		cfg->persistence_sync_ms == KITE_PERSISTENCE_SYNC_ALWAYS
			? "before every acknowledgement"
		: cfg->persistence_sync_ms == KITE_PERSISTENCE_SYNC_NEVER
			? "never (the kernel writes back)"
			: every);
	return 0;
}
