/* Durable state: per-shard logs, acknowledgements that wait for them, and
 * recovery at startup (docs/PERSISTENCE.md).
 *
 * A shard appends records to `cur` as things change. At the end of each
 * loop turn `cur` becomes one pwrite into the page cache, which moves
 * `durable` on and settles the tickets waiting for it, in append order,
 * before the turn's sends; under `persistence_sync always` an fdatasync
 * through io_uring does that instead, one at a time, each covering every
 * write made before it started (group commit). Positions count record
 * bytes since startup ("LSN"). */
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
#include "core/retain.h"
#include "io/conn.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/session-t.h"
#include "io/shard.h"


/* user_data id of the log's two requests. */
enum persist_io { PERSIST_WRITE = 1, PERSIST_SYNC };

struct log_waiter {
	uint64_t lsn;
	struct persist_ticket *t;
};

/* Acks gathered into one ACKS record: at about 3 bytes an entry, more
 * would save little and make the list slower to search. */
#define LOG_ACKS 64u
_Static_assert(LOG_ACKS <= JOURNAL_ACKS_MAX, "an ACKS record holds them");

/* Room for a SENT list: about 3,000 deliveries of a message without
 * subscription ids. */
#define LOG_SENT_BYTES (16u << 10)
_Static_assert(LOG_SENT_BYTES >= JOURNAL_SENT_LEN_MAX, "room for one");

struct shard_log {
	int fd;
	char path[PERSIST_LOG_PATH_MAX];
	uint64_t generation;
	struct journal_buf cur;	 /* this turn's records */
	struct journal_buf wbuf; /* being written by io_uring (slow disk) */
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
	/* This generation's first snapshot, written behind the live records
	 * after a start, is not durable yet: the previous run's files are
	 * what recovery needs until it is (persist_start_retire). */
	bool start_snap;
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
	/* Finished deliveries (DONE) gathered into one ACKS record, written
	 * before the next record they must precede (log_put) and at the
	 * turn's end. `ack_bits` has a bit per (session, message) listed,
	 * so that a delivery logged meanwhile rarely needs the list read: a
	 * fan-out logs a SENT for every subscriber while the list is full of
	 * the acks of the message before; 8192 bits for at most LOG_ACKS
	 * entries send fewer than one in a hundred SENTs to the list. */
	uint32_t ack_n, ack_len;
	uint64_t ack_bits[128];
	struct journal_ack ack_prev;
	uint8_t ack_list[LOG_ACKS * JOURNAL_ACK_LEN_MAX];
	/* Deliveries of one message sent at once, gathered into one SENT
	 * record: written before anything waits for the log (so what an
	 * acknowledgement waits for includes them), before another
	 * message's deliveries, and before the records they must precede
	 * (log_put). A fan-out's message is one record. */
	uint32_t sent_n, sent_len;
	uint64_t sent_msg, sent_prev_key;
	uint8_t sent_list[LOG_SENT_BYTES];
	uint64_t next_msg;	  /* this shard's message counter */
	uint64_t failed_writes;
	struct log_limit err_log;
	/* Until then writes go through io_uring (a slow page-cache write). */
	uint64_t async_until_ms;
	uint32_t slow_writes;	 /* in a row */
	struct log_limit slow_log;
};

uint64_t persist_wall_ms(void)
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

/* Set once before the shards start (persist_set_upcalls). */
static const struct persist_upcalls *up;

void persist_set_upcalls(const struct persist_upcalls *u)
{
	up = u;
}

/* ---- the previous run's files --------------------------------------------- */

/* jemalloc (release builds) returns freed pages to the system only as
 * later allocations pass its decay clock, which an idle broker never
 * does. Weak: absent under sanitizers and other allocators. */
extern int mallctl(const char *name, void *oldp, size_t *oldlenp,
		   void *newp, size_t newlen) __attribute__((weak));

void persist_release_heap(void)
{
	/* "arena.<MALLCTL_ARENAS_ALL>.purge": every arena. */
	if (mallctl)
		(void)mallctl("arena.4096.purge", NULL, NULL, NULL, 0);
}

void persist_remove_logs(char (*names)[PERSIST_NAME_MAX], size_t n)
{
	char path[PERSIST_LOG_PATH_MAX];
	for (size_t i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", persist_dir, names[i]);
		if (unlink(path) < 0 && errno != ENOENT)
			log_msg(KITE_LOG_WARNING, "Persistence: cannot remove "
				"%s: %s", path, strerror(errno));
	}
	persist_fsync_dir();
}

/* Kept after a start until every shard's first snapshot is durable
 * (persist_start_retire): set before the shards start, then touched only
 * by the shard that brings `left` to zero. */
static struct {
	char (*names)[PERSIST_NAME_MAX];
	size_t n;
	_Atomic unsigned left;	/* shards whose start snapshot is pending */
	_Atomic bool abandoned; /* one stopped before its snapshot was durable */
	uint64_t start_ms;
} start_old;

void persist_start_retire(char (*names)[PERSIST_NAME_MAX], size_t n,
			  unsigned nshards)
{
	start_old.names = names;
	start_old.n = n;
	start_old.start_ms = persist_wall_ms();
	atomic_store(&start_old.abandoned, false);
	atomic_store_explicit(&start_old.left, nshards, memory_order_release);
}

/* Shard s's start snapshot is durable (done) or never will be: the last
 * shard removes the old files, only when every snapshot is durable. */
static void start_part_done(bool done)
{
	if (!done)
		atomic_store(&start_old.abandoned, true);
	if (atomic_fetch_sub_explicit(&start_old.left, 1, memory_order_acq_rel) != 1)
		return;
	if (!atomic_load(&start_old.abandoned)) {
		/* The new files' names durable before the old ones go. */
		persist_fsync_dir();
		persist_remove_logs(start_old.names, start_old.n);
		log_msg(KITE_LOG_NOTICE, "Persistence: the new generation's "
			"snapshots are durable (%llu ms after the start); the "
			"previous %zu files are removed.",
			(unsigned long long)(persist_wall_ms() - start_old.start_ms),
			start_old.n);
	}
	free(start_old.names);
	start_old.names = NULL;
	start_old.n = 0;
	/* The snapshot's slices and the retained store's gathering are given
	 * back (jemalloc keeps freed pages until later allocations pass its
	 * decay clock, which an idle broker never does). */
	persist_release_heap();
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
			up->session_pump(ss);
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

static void log_sent_flush(struct shard *s);

/* Where the log ends, for what waits on it: gathered deliveries are
 * appended first, so that the wait covers them. */
static uint64_t log_end(struct shard *s)
{
	log_sent_flush(s);
	return s->log->appended;
}

void persist_gate(struct conn *c)
{
	struct shard *s = c->shard;
	if (!persist_on(s) || s->log->durable >= log_end(s))
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
	if (!l || l->durable >= log_end(s)) {
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
	conn_held_ack_set(h, bytes, len);
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
	if (!persist_on(s) || s->log->durable >= log_end(s))
		return;
	struct persist_ticket *t = ticket_new(s, NULL);
	if (!t)
		return;
	conn_held_ack_expect(h);
	t->held = h;
	t->conn_id = c->id;
	t->conn_gen = c->gen;
	log_wait(s, t);
}

void persist_ack(struct conn *c, const uint8_t *bytes, size_t len)
{
	struct shard *s = c->shard;
	if (!persist_on(s) || s->log->durable >= log_end(s)) {
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

static void log_append(struct shard *s, const struct journal_record *r);

static void log_acks_flush(struct shard *s)
{
	struct shard_log *l = s->log;
	if (!l->ack_n)
		return;
	struct journal_record r = {.type = JOURNAL_ACKS};
	r.acks.n = l->ack_n;
	r.acks.list = persist_jb(l->ack_list, l->ack_len);
	l->ack_n = l->ack_len = 0;
	memset(l->ack_bits, 0, sizeof(l->ack_bits));
	l->ack_prev = (struct journal_ack){0};
	log_append(s, &r);
}

#define ACK_BITS_SHIFT 51 /* 64 - log2(8192) */
_Static_assert(sizeof(((struct shard_log *)0)->ack_bits) * 8 ==
		       1u << (64 - ACK_BITS_SHIFT), "one bit per hash value");

static uint32_t ack_hash(uint64_t key, uint64_t msg_id)
{
	return (uint32_t)((key * 0x9e3779b97f4a7c15ull ^ msg_id) *
				  0xff51afd7ed558ccdull >> ACK_BITS_SHIFT);
}

/* Whether (key, msg_id) is in the pending ACKS list. */
static bool acks_have(const struct shard_log *l, uint64_t key, uint64_t msg_id)
{
	uint32_t h = ack_hash(key, msg_id);
	if (!l->ack_n || !(l->ack_bits[h / 64] & 1ull << h % 64))
		return false;
	struct journal_bytes list = persist_jb(l->ack_list, l->ack_len);
	struct journal_ack a = {0};
	while (journal_ack_next(&list, &a))
		if (a.key == key && a.msg_id == msg_id)
			return true;
	return false;
}

static void log_sent_flush(struct shard *s)
{
	struct shard_log *l = s->log;
	if (!l->sent_n)
		return;
	struct journal_record r = {.type = JOURNAL_SENT};
	r.sent.msg_id = l->sent_msg;
	r.sent.n = l->sent_n;
	r.sent.list = persist_jb(l->sent_list, l->sent_len);
	l->sent_n = l->sent_len = 0;
	l->sent_prev_key = 0;
	log_append(s, &r);
}

/* Gathered records (the SENT and ACKS lists) wait while the records
 * logged after them cannot be changed by their coming later. Both only
 * touch their (session, message) pairs in their sessions' queues, so they
 * pass messages, retained messages, incoming QoS 2 and wills. An ack may
 * not pass a record that queues its own pair again; a SENT may not pass
 * an OUT of its message (a later state). A QUEUE of a pair a SENT lists
 * replays the same either way (the first adds it, the second keeps it).
 * The two lists never hold the same pair (persist_sent, persist_done
 * write the other list first). Nothing else about sessions passes them:
 * their start and end, subscriptions, a snapshot. */
static void log_put(struct shard *s, const struct journal_record *r)
{
	struct shard_log *l = s->log;
	if (l->sent_n || l->ack_n) {
		switch (r->type) {
		case JOURNAL_MSG:
		case JOURNAL_RETAIN:
		case JOURNAL_QOS2_IN:
		case JOURNAL_QOS2_REL:
		case JOURNAL_WILL:
			break;
		case JOURNAL_QUEUE:
			if (acks_have(l, r->queue.key, r->queue.msg_id))
				log_acks_flush(s);
			break;
		case JOURNAL_OUT:
			if (l->sent_n && r->out.msg_id == l->sent_msg)
				log_sent_flush(s);
			if (acks_have(l, r->out.key, r->out.msg_id))
				log_acks_flush(s);
			break;
		default:
			log_sent_flush(s);
			log_acks_flush(s);
		}
	}
	log_append(s, r);
}

static void log_append(struct shard *s, const struct journal_record *r)
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
	l->changes += r->type == JOURNAL_ACKS ? r->acks.n : 1;
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
	uint64_t now = persist_wall_ms();
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
	r.msg.topic = persist_jb(msg_topic(m), m->topic_len);
	r.msg.payload = persist_jb(msg_payload(m), m->payload_len);
	r.msg.props = persist_jb(msg_payload(m) + m->payload_len, m->props_len);
	log_put(s, &r);
}

/* m's MSG record, unless it was the last one logged; m is named id. */
static void log_msg_once(struct shard *s, struct msg *m, uint64_t id)
{
	if (s->log->last_logged_msg != id) {
		log_msg_record(s, m, id);
		s->log->last_logged_msg = id;
	}
}

/* m's id, with its MSG record ahead of the record about to refer to it. */
static uint64_t log_msg_ref(struct shard *s, struct msg *m)
{
	uint64_t id = persist_msg_id(s, m);
	log_msg_once(s, m, id);
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
	r.session.client_id = persist_jb(ss->client_id, ss->client_id_len);
	r.session.username = persist_jb(ss->username ? ss->username : "",
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
		r.session.client_id = persist_jb(bid, (size_t)ss->client_id_len + 1u);
	}
	log_put(s, &r);
	free(bid);
}

static void snapshot_session(struct shard *s, struct session *ss);

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
	ss->offline_wall_ms = ss->conn ? 0 : persist_wall_ms();
	if (!ss->logged && (ss->subs || ss->q_count || ss->inflight_count ||
			    ss->qos2_in_count))
		/* First logged here with state from elsewhere (another node
		 * of the cluster handed it over): all of it, at once. */
		snapshot_session(ss->shard, ss);
	else
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
	r.sub.filter = persist_jb(filter, len);
	log_put(ss->shard, &r);
}

void persist_unsub(struct session *ss, const char *filter, uint16_t len)
{
	if (!logs(ss))
		return;
	struct journal_record r = {.type = JOURNAL_UNSUB};
	r.unsub.key = ss->id;
	r.unsub.filter = persist_jb(filter, len);
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

/* persist_sent for a logged session; m's id. */
static uint64_t log_sent(struct session *ss, struct msg *m,
			 const struct deliv *d, uint16_t pid)
{
	struct shard *s = ss->shard;
	struct shard_log *l = s->log;
	uint64_t id = persist_msg_id(s, m);
	if (l->sent_n && (l->sent_msg != id || l->sent_n == JOURNAL_SENT_MAX ||
			  sizeof(l->sent_list) - l->sent_len <
				  JOURNAL_SENT_LEN_MAX))
		log_sent_flush(s);
	log_msg_once(s, m, id); /* before the SENT record, which follows it */
	if (acks_have(l, ss->id, id))
		log_acks_flush(s); /* the ack of an earlier copy goes first */
	struct journal_sent e = {
		.key = ss->id,
		.qos = d->qos,
		.retain = d->retain,
		.nsub = d->nsub,
		.pid = pid,
	};
	memcpy(e.sub, d->sub, sizeof(e.sub));
	l->sent_msg = id;
	l->sent_len += (uint32_t)journal_sent_encode(
		l->sent_list + l->sent_len, &l->sent_prev_key, &e);
	l->sent_n++;
	return id;
}

void persist_sent(struct session *ss, struct msg *m, const struct deliv *d,
		  uint16_t pid)
{
	if (logs(ss))
		log_sent(ss, m, d, pid);
}

void persist_done(struct session *ss, uint64_t msg_id)
{
	if (!logs(ss))
		return;
	struct shard_log *l = ss->shard->log;
	if (l->sent_n && l->sent_msg == msg_id)
		log_sent_flush(ss->shard); /* the delivery goes before its end */
	if (l->ack_n == LOG_ACKS)
		log_acks_flush(ss->shard);
	l->ack_len += (uint32_t)journal_ack_encode(l->ack_list + l->ack_len,
						   &l->ack_prev, ss->id, msg_id);
	l->ack_n++;
	uint32_t h = ack_hash(ss->id, msg_id);
	l->ack_bits[h / 64] |= 1ull << h % 64;
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
		r.will.at_wall_ms = persist_wall_ms() + left;
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
	r.retain.topic = persist_jb(msg_topic(m), m->topic_len);
	if (m->payload_len)
		r.retain.msg_id = log_msg_ref(s, m);
	const struct msg_source *src = m->source;
	if (r.retain.msg_id && src) {
		r.retain.has_source = true;
		r.retain.source_listener = src->listener;
		r.retain.source_has_username = src->username != NULL;
		r.retain.source_client_id = persist_jb(src->client_id,
					       (uint32_t)strlen(src->client_id));
		if (src->username)
			r.retain.source_username =
				persist_jb(src->username, (uint32_t)strlen(src->username));
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
		r.retain.topic = persist_jb(msg_topic(m), m->topic_len);
		log_put(s, &r);
	}
}

void persist_on_retained(struct shard *s, struct persist_ticket *t)
{
	log_retained_now(s, t->msg);
	log_wait(s, t);
}

/* ---- writing ---------------------------------------------------------------- */

/* A turn's records go into the page cache with pwrite at the turn's
 * end: a killed process loses nothing the kernel took, which is all that
 * `persistence_sync N` and `never` promise, so their acknowledgements
 * leave in the same turn rather than one io_uring round trip later.
 * fdatasync, which waits for the disk, stays on io_uring. Such a write
 * blocks only while the kernel throttles writers (dirty pages over its
 * limit on a slow disk: pauses of at most 200 ms each). LOG_SLOW_WRITES
 * writes in a row that took longer than LOG_SLOW_WRITE_NS hand the
 * shard's writes to io_uring (its workers block instead of the shard)
 * for LOG_ASYNC_MS, so that the shard's other clients are served
 * meanwhile. One slow write is not enough: on a busy machine the shard
 * is preempted for as long now and then, which the kernel's workers
 * would not avoid. */
#define LOG_SLOW_WRITE_NS (10u * 1000u * 1000u)
#define LOG_SLOW_WRITES 3u
#define LOG_ASYNC_MS 1000u
/* Records that settling causes (a QoS 2 release logged once its
 * destinations have the message, the sends of a queue it unblocked) are
 * written in the same turn end, up to this many writes; more is left
 * for the next turn, which then does not sleep. */
#define LOG_TURN_WRITES 4

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

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

/* Once a finished snapshot is synced, the new generation stands on its
 * own: the old one goes. True when this shard removed a compacted file
 * (a start's are removed by the last shard, start_part_done). */
static bool old_gen_check(struct shard *s)
{
	struct shard_log *l = s->log;
	if (!l->old_pending || l->synced < l->snap_end)
		return false;
	l->old_pending = false;
	if (l->start_snap) {
		l->start_snap = false;
		start_part_done(true);
		return false;
	}
	if (unlink(l->old_path) < 0 && errno != ENOENT)
		log_msg(KITE_LOG_WARNING, "Persistence: cannot remove %s: %s",
			l->old_path, strerror(errno));
	return true;
}

static void log_write_failed(struct shard *s, int err, uint64_t len)
{
	struct shard_log *l = s->log;
	uint32_t left_out;
	l->failed_writes++;
	stat_add(&s->stats.persist_write_errors, 1);
	if (log_limit_take(&l->err_log, s->now_ms, 1, &left_out))
		log_msg(KITE_LOG_ERR, "Persistence: writing %s failed: %s; "
			"%llu bytes of changes are not durable (%llu failed "
			"writes so far); %s", l->path, strerror(err),
			(unsigned long long)len,
			(unsigned long long)l->failed_writes,
			sync_always(s) ? "their acknowledgements are withheld "
					 "(persistence_sync always)"
				       : "acknowledgements go on");
}

/* Log buffers larger than this are freed once written. */
#define LOG_BUF_KEEP (4u << 20)

/* A snapshot's retained store or a burst can grow a buffer to many MiB;
 * keeping that capacity would hold it resident for good. */
static void log_buf_done(struct journal_buf *b)
{
	b->len = 0;
	if (b->cap > LOG_BUF_KEEP)
		journal_buf_free(b);
}

/* Everything before `end` is written (err: the last write failed). A
 * failed write is not retried: its records are gone from memory
 * already. What waits on it is released, marked failed
 * (persist_ticket_done decides what that costs the client); under
 * `always` that may include waiters of earlier writes whose fdatasync
 * is still running: withheld, they are sent again, never lost. */
static void log_written(struct shard *s, uint64_t end, int err)
{
	struct shard_log *l = s->log;
	l->written = end;
	if (!err && sync_always(s))
		return; /* the turn end's fdatasync covers it */
	if (l->durable < end)
		l->durable = end;
	log_settle_waiters_as(s, err != 0);
}

/* The turn's records, written now into the page cache. */
static void log_write_now(struct shard *s)
{
	struct shard_log *l = s->log;
	uint64_t len = l->cur.len;
	uint64_t start_ns = mono_ns();
	int err = 0;
	if (persist_write_all(l->fd, l->cur.data, l->cur.len,
			      file_off(l, l->appended - len)) < 0)
		err = errno;
	uint64_t took_ns = mono_ns() - start_ns;
	if (err)
		log_write_failed(s, err, len);
	else
		stat_add(&s->stats.persist_bytes_written, len);
	log_buf_done(&l->cur);
	l->slow_writes = took_ns > LOG_SLOW_WRITE_NS ? l->slow_writes + 1 : 0;
	if (l->slow_writes >= LOG_SLOW_WRITES) {
		uint32_t left_out;
		l->slow_writes = 0;
		l->async_until_ms = s->now_ms + LOG_ASYNC_MS;
		if (log_limit_take(&l->slow_log, s->now_ms, 1, &left_out))
			log_msg(KITE_LOG_WARNING, "Persistence: writing %llu "
				"bytes to %s took %llu ms, the third slow write "
				"in a row (the kernel is throttling writes to "
				"this disk?): shard %u writes through io_uring "
				"for a second",
				(unsigned long long)len, l->path,
				(unsigned long long)(took_ns / 1000000u), s->idx);
	}
	log_written(s, l->appended, err);
}

/* The turn's records, handed to io_uring: the next turn fills a fresh
 * buffer meanwhile. */
static void log_write_async(struct shard *s)
{
	struct shard_log *l = s->log;
	struct journal_buf t = l->wbuf;
	l->wbuf = l->cur;
	l->cur = t;
	l->cur.len = 0;
	l->w_lsn = l->appended - l->wbuf.len;
	log_submit_write(s);
}

/* Whether the turn's records may be written now. Under `always` a
 * compaction closes the old file, so everything written to it must be
 * synced first: while a compaction waits for that, new records wait in
 * `cur` (they go to the new file). */
static bool log_may_write(const struct shard *s)
{
	const struct shard_log *l = s->log;
	if (!l->cur.len || l->write_busy)
		return false;
	return !(l->compact_due && sync_always(s));
}

/* Writes what is in `cur`, again while settling adds records; true when
 * some are left for the next turn, which should not sleep. */
static bool log_flush(struct shard *s)
{
	struct shard_log *l = s->log;
	for (unsigned i = 0; i < LOG_TURN_WRITES && log_may_write(s); i++) {
		if (s->now_ms < l->async_until_ms) {
			log_write_async(s);
			break;
		}
		log_write_now(s);
	}
	/* Group commit: one fdatasync covers every write before it; those
	 * made while it runs wait for the next one. */
	if (sync_always(s) && !l->sync_busy && l->synced < l->written)
		log_submit_sync(s, l->written);
	return log_may_write(s);
}

bool persist_turn_end(struct shard *s)
{
	struct shard_log *l = s->log;
	if (!l)
		return false;
	log_sent_flush(s);
	log_acks_flush(s);
	if (l->compact_due && !l->write_busy && !l->sync_busy &&
	    (!sync_always(s) || l->synced >= l->written))
		compact_start(s);
	/* Until the start's snapshot is durable a restart reads both
	 * generations: it goes on at every turn (not a slice per tick while
	 * idle), and is synced as soon as it is written (not at a tick). A
	 * slice waits for the write of the one before (io_uring's, on a slow
	 * disk): turns that do not sleep would pile slices up in `cur`, and
	 * every acknowledgement waits for all of `cur` to be written. */
	bool paced = l->start_snap && l->write_busy;
	if (l->snapshotting && !paced)
		snapshot_slice(s);
	bool more = log_flush(s);
	if (l->start_snap && l->old_pending && !l->sync_busy &&
	    !l->write_busy && l->written >= l->snap_end && l->synced < l->snap_end)
		log_submit_sync(s, l->written);
	return more || (l->start_snap && l->snapshotting && !l->write_busy);
}

static void log_on_write(struct shard *s, int res)
{
	struct shard_log *l = s->log;
	if (res == 0 && l->wbuf.len)
		res = -ENOSPC; /* nothing taken: as good as a full disk */
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
		log_write_failed(s, -res, l->wbuf.len);
	else
		stat_add(&s->stats.persist_bytes_written, l->wbuf.len);
	l->write_busy = false;
	uint64_t end = l->w_lsn + l->wbuf.len;
	log_buf_done(&l->wbuf);
	log_written(s, end, res < 0 ? -res : 0);
}

static void log_on_sync(struct shard *s, int res)
{
	struct shard_log *l = s->log;
	l->sync_busy = false;
	l->last_sync_ms = s->now_ms;
	if (res < 0) {
		log_write_failed(s, -res, l->sync_target - l->synced);
		/* A compaction under `always` waits for the old file to be
		 * synced: not behind a disk that fails (records would pile
		 * up in `cur`). It is wanted again at a later tick. */
		l->compact_due = false;
	} else {
		l->synced = l->sync_target;
	}
	if (sync_always(s)) {
		if (l->durable < l->sync_target)
			l->durable = l->sync_target;
		log_settle_waiters_as(s, res < 0);
	}
	if (l->start_snap)
		old_gen_check(s);
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
	/* A compaction drops this shard's history (a DONE, an UNSUB) while
	 * the previous run's files may still restate the same sessions (on
	 * another shard now): not before those are gone. */
	if (atomic_load_explicit(&start_old.left, memory_order_acquire))
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
	old_gen_check(s);
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
		r.sub.filter = persist_jb(e->filter, e->len);
		log_put(s, &r);
	}
	for (uint32_t i = ss->if_head; i != ss->if_tail; i++) {
		struct inflight *f = session_inflight_at(ss, i);
		if (f->state == INFLIGHT_DONE)
			continue;
		if (f->msg && (f->state == INFLIGHT_WAIT_PUBACK ||
			       f->state == INFLIGHT_WAIT_PUBREC) &&
		    f->d.qos == (f->state == INFLIGHT_WAIT_PUBACK ? 1 : 2)) {
			f->msg_id = log_sent(ss, f->msg, &f->d, f->pid);
			continue;
		}
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

char persist_dir[PERSIST_DIR_MAX];

static void shard_log_path(char *out, size_t len, unsigned shard,
			   uint64_t gen)
{
	snprintf(out, len, "%s/shard-%u.%llu.log", persist_dir, shard,
		 (unsigned long long)gen);
}

/* Writes all of buf at off, synchronously (startup and shutdown). */
int persist_write_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			errno = ENOSPC; /* nothing taken: as good as a full disk */
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

void persist_fsync_dir(void)
{
	int fd = open(persist_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* The start's snapshot in the background: the file has its header, the
 * snapshot follows a slice per turn behind the live records, as a
 * compaction's does. The sessions recovered are logged from now on (their
 * state is in the previous run's files, kept until the snapshot is
 * durable). */
static int log_open_background(struct shard *s)
{
	struct shard_log *l = s->log;
	for (struct session *ss = s->sessions; ss; ss = ss->next)
		if (ss->persistent)
			ss->logged = true;
	l->snap_next = s->sessions;
	l->snapshotting = true;
	l->start_snap = true;
	return 0;
}

/* At startup nothing else runs: the snapshot in one go, durable. */
static int log_open_sync(struct shard *s)
{
	struct shard_log *l = s->log;
	snapshot_shard(s);
	l->snap_bytes = l->cur.len;
	int rc = persist_write_all(l->fd, l->cur.data, l->cur.len,
				   JOURNAL_HEADER_LEN);
	if (rc == 0)
		rc = fdatasync(l->fd);
	if (rc < 0)
		return -1;
	/* Positions count from the file's start. */
	l->appended = l->cur.len;
	l->written = l->synced = l->durable = l->appended;
	/* The whole shard's snapshot: hundreds of MiB for a large state. */
	journal_buf_free(&l->cur);
	l->last_logged_msg = 0;
	l->changes = 0; /* autosave_on_changes counts from here */
	return 0;
}

/* A new log generation for s, opened and holding a snapshot of what s
 * owns: durable on return, or (background) written while s runs. */
int persist_log_open(struct shard *s, uint64_t gen, uint64_t next_msg,
		     bool background)
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
	l->last_sync_ms = l->last_compact_ms = s->now_ms;
	uint8_t hdr[JOURNAL_HEADER_LEN];
	journal_header(hdr, s->idx, gen);
	s->log = l;
	int rc = persist_write_all(l->fd, hdr, sizeof(hdr), 0);
	if (rc == 0)
		rc = background ? log_open_background(s) : log_open_sync(s);
	if (rc < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: writing %s: %s",
			l->path, strerror(errno));
		return -1;
	}
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
	if (fd < 0 || persist_write_all(fd, hdr, sizeof(hdr), 0) < 0) {
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
	log_sent_flush(s);
	log_acks_flush(s);
	bool ok = true;
	/* A write still in flight may be cancelled with the ring: its
	 * bytes (still in wbuf) go again, synchronously, at their offset;
	 * then what this turn added. */
	if (l->write_busy && l->wbuf.len &&
	    persist_write_all(l->fd, l->wbuf.data, l->wbuf.len, file_off(l, l->w_lsn)) < 0) {
		log_msg(KITE_LOG_ERR, "Persistence: writing %s at shutdown: %s",
			l->path, strerror(errno));
		ok = false;
	}
	/* A stop during the start's snapshot or a compaction finishes it
	 * (a slice, then its write, so that memory stays at a slice): the
	 * next start then reads one generation, not two. */
	for (;;) {
		if (l->cur.len &&
		    persist_write_all(l->fd, l->cur.data, l->cur.len,
				      file_off(l, l->appended - l->cur.len)) < 0) {
			log_msg(KITE_LOG_ERR, "Persistence: writing %s at "
				"shutdown: %s", l->path, strerror(errno));
			ok = false;
			break;
		}
		l->cur.len = 0;
		if (!l->snapshotting)
			break;
		snapshot_slice(s);
	}
	if (fdatasync(l->fd) < 0) {
		log_msg(KITE_LOG_ERR, "Persistence: syncing %s at shutdown: %s",
			l->path, strerror(errno));
		ok = false;
	}
	close(l->fd);
	if (ok)
		l->synced = l->appended;
	/* A finished snapshot is synced now: the generation before goes. */
	if (old_gen_check(s))
		persist_fsync_dir();
	if (l->start_snap)
		start_part_done(false); /* the previous run's files stay */
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
