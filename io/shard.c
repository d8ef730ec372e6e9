/* The shard's services (io/shard.h), the bottom of io/: its submission
 * queue, the rings to other shards, its connection slots, its figures.
 * Every unit uses them; they call nothing above. The turn that drives a
 * shard is io/loop.c. */

#include <assert.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/hash.h"
#include "io/conn-t.h"
#include "io/msg.h"
#include "io/session-t.h"
#include "io/shard.h"


uint64_t shard_clock_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct xring *shard_xring(struct broker *b, unsigned src, unsigned dst)
{
	assert(src <= b->nshards && dst < b->nshards);
	return &b->xrings[(size_t)src * b->nshards + dst];
}

struct io_uring_sqe *shard_sqe(struct shard *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (!sqe) {
		/* SQ full: hand the batch to the kernel and take a slot. */
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	assert(sqe);
	return sqe;
}

/* ---- cross-shard rings ------------------------------------------------- */

static bool xring_push(struct xring *r, struct xitem it)
{
	uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	if (tail - head == XRING_SLOTS)
		return false;
	r->items[tail & (XRING_SLOTS - 1)] = it;
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return true;
}

static bool overflow_push(struct xoverflow *o, struct xitem it)
{
	if (o->count == o->cap) {
		uint32_t ncap = o->cap ? o->cap * 2 : 256;
		struct xitem *n = malloc(sizeof(*n) * ncap);
		if (!n)
			return false;
		for (uint32_t i = 0; i < o->count; i++)
			n[i] = o->items[(o->head + i) % o->cap];
		free(o->items);
		o->items = n;
		o->head = 0;
		o->cap = ncap;
	}
	o->items[(o->head + o->count) % o->cap] = it;
	o->count++;
	return true;
}

/* Set by the loop (loop.c, above every unit that posts): what an item
 * that will not be delivered holds is given back by its owner, which
 * this layer does not know. */
static void (*item_discard)(struct xitem it);

void shard_set_item_discard(void (*fn)(struct xitem it))
{
	item_discard = fn;
}

/* A delivery the other shard will not get: QoS 0 past the bound, or any
 * item when memory is out (then the log says so: the publishers were
 * paused long before, so this means the machine is out of memory). */
static void shard_post_failed(struct shard *s, unsigned dst, struct xitem it)
{
	bool qos0 = it.kind == XK_DELIVER && ((struct msg *)it.ptr)->qos == 0;
	if (!qos0)
		log_msg(KITE_LOG_ERR, "shard %u: out of memory queueing for shard "
			"%u: a %s was lost", s->idx, dst,
			it.kind == XK_DELIVER ? "message" : "control item");
	if (it.kind == XK_DELIVER)
		shard_stats_drop(s, DROP_NO_MEMORY, 1);
	item_discard(it);
}

void shard_post(struct shard *s, unsigned dst, struct xitem it)
{
	assert(dst != s->idx && dst < s->b->nshards);
	struct xoverflow *o = &s->overflow[dst];
	s->wake_mask |= 1ull << dst;
	/* Keep order: once something overflowed, everything queues behind. */
	if (!o->count && xring_push(shard_xring(s->b, s->idx, dst), it))
		return;
	if (o->count >= XOVERFLOW_MAX_ITEMS && it.kind == XK_DELIVER &&
	    ((struct msg *)it.ptr)->qos == 0) {
		shard_post_failed(s, dst, it);
		return;
	}
	if (!overflow_push(o, it))
		shard_post_failed(s, dst, it);
	else if (o->count >= XOVERFLOW_PAUSE_ITEMS)
		s->backlogged = true;
}

bool shard_backlogged(const struct shard *s)
{
	return s->backlogged;
}

void shard_pause_input(struct shard *s, struct conn *c)
{
	if (c->in_paused || c->state != CONN_ACTIVE)
		return;
	c->in_paused = true;
	s->input_paused++;
	if (c->flags & CONN_RECV_ARMED) {
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_cancel64(sqe, ud_pack(UD_RECV, c->id, c->gen), 0);
		io_uring_sqe_set_data64(sqe, ud_pack(UD_CANCEL, c->id, c->gen));
	}
}

/* The queues are short again: every paused client is read again. */
void shard_resume_input(struct shard *s)
{
	for (unsigned d = 0; d < s->b->nshards; d++)
		if (s->overflow[d].count > XOVERFLOW_RESUME_ITEMS)
			return;
	for (uint32_t i = 0; i < s->conns_cap && s->input_paused; i++) {
		struct conn *c = s->conns[i];
		if (!c || !c->in_paused)
			continue;
		c->in_paused = false;
		s->input_paused--;
		if (c->state == CONN_ACTIVE && !(c->flags & CONN_RECV_ARMED) &&
		    c->ktls != KTLS_STOPPING)
			shard_arm_recv(s, c);
	}
}

bool shard_flush_overflow(struct shard *s)
{
	bool pending = false, backlogged = false;
	for (unsigned d = 0; d < s->b->nshards; d++) {
		struct xoverflow *o = &s->overflow[d];
		struct xring *r = shard_xring(s->b, s->idx, d);
		while (o->count && xring_push(r, o->items[o->head])) {
			o->head = (o->head + 1) % o->cap;
			o->count--;
			s->wake_mask |= 1ull << d;
		}
		pending |= o->count != 0;
		backlogged |= o->count >= XOVERFLOW_PAUSE_ITEMS;
	}
	s->backlogged = backlogged;
	return pending;
}

void shard_send_wakeups(struct shard *s)
{
	uint64_t mask = s->wake_mask;
	s->wake_mask = 0;
	while (mask) {
		unsigned d = (unsigned)__builtin_ctzll(mask);
		mask &= mask - 1;
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_msg_ring(sqe, s->b->shards[d].ring.ring_fd, 0,
				       ud_pack(UD_WAKE, 0, 0), 0);
		/* Nothing to do when it worked; failures still post a CQE. */
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io_uring_sqe_set_data64(sqe, ud_pack(UD_WAKE, 1, 0));
	}
}

void shard_post_from_main(struct broker *b, unsigned dst, struct xitem it)
{
	pthread_mutex_lock(&b->ctl_lock);
	struct xring *r = shard_xring(b, b->nshards, dst);
	while (!xring_push(r, it))
		usleep(1000); /* control items are rare; the shard drains */
	struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ctl_ring);
	assert(sqe);
	io_uring_prep_msg_ring(sqe, b->shards[dst].ring.ring_fd, 0,
			       ud_pack(UD_WAKE, 0, 0), 0);
	io_uring_submit_and_wait(&b->ctl_ring, 1);
	struct io_uring_cqe *cqe;
	if (io_uring_peek_cqe(&b->ctl_ring, &cqe) == 0)
		io_uring_cqe_seen(&b->ctl_ring, cqe);
	pthread_mutex_unlock(&b->ctl_lock);
}

/* ---- connections table ------------------------------------------------ */

int shard_conn_attach(struct shard *s, struct conn *c)
{
	if (!s->free_count) {
		uint32_t ncap = s->conns_cap ? s->conns_cap * 2 : 1024;
		if (ncap > (1u << 24))
			return -1;
		struct conn **n = realloc(s->conns, sizeof(*n) * ncap);
		uint32_t *f = realloc(s->free_ids, sizeof(*f) * ncap);
		if (!n || !f) {
			if (n)
				s->conns = n;
			if (f)
				s->free_ids = f;
			return -1;
		}
		s->conns = n;
		s->free_ids = f;
		for (uint32_t i = ncap; i > s->conns_cap; i--) {
			s->conns[i - 1] = NULL;
			s->free_ids[s->free_count++] = i - 1;
		}
		s->conns_cap = ncap;
	}
	c->id = s->free_ids[--s->free_count];
	c->gen = ++s->next_gen;
	c->shard = s;
	s->conns[c->id] = c;
	s->conns_used++;
	return 0;
}

void shard_conn_detach(struct shard *s, struct conn *c)
{
	assert(s->conns[c->id] == c);
	s->conns[c->id] = NULL;
	s->free_ids[s->free_count++] = c->id;
	s->conns_used--;
}

struct conn *shard_conn_lookup(struct shard *s, uint32_t id, uint32_t gen)
{
	if (id >= s->conns_cap)
		return NULL;
	struct conn *c = s->conns[id];
	return c && c->gen == gen ? c : NULL;
}

struct conn *shard_conn_get(struct shard *s, uint64_t ud)
{
	uint32_t id = ud_id(ud);
	if (id >= s->conns_cap)
		return NULL;
	struct conn *c = s->conns[id];
	return c && c->gen == ud_gen(ud) ? c : NULL;
}

void shard_arm_recv(struct shard *s, struct conn *c)
{
	if (c->in_paused || c->parked)
		return;
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, ud_pack(UD_RECV, c->id, c->gen));
	c->flags |= CONN_RECV_ARMED;
}

void shard_stats_drop(struct shard *s, enum drop_reason why, uint64_t n)
{
	assert(why < DROP_REASONS);
	stat_add(&s->stats.dropped[why], n);
	stat_add(&s->stats.msgs_dropped, n);
}

/* ---- sessions by id (shared-subscription forwards find them) ------------ */

static bool sid_eq_cb(const struct htab_link *l, const void *id, size_t len)
{
	const struct session *ss = htab_entry(l, const struct session, id_link);
	return len == sizeof(ss->id) && !memcmp(&ss->id, id, len);
}

int shard_session_index(struct shard *s, struct session *ss)
{
	return htab_insert(&s->by_id, &ss->id_link,
			   hash_bytes(&ss->id, sizeof(ss->id)));
}

void shard_session_unindex(struct shard *s, struct session *ss)
{
	htab_remove(&s->by_id, &ss->id_link);
}

struct session *shard_session_by_id(struct shard *s, uint64_t id)
{
	return htab_entry(htab_find(&s->by_id, hash_bytes(&id, sizeof(id)), &id,
				    sizeof(id), sid_eq_cb),
			  struct session, id_link);
}

/* ---- parked input and takeovers (the loop runs them: loop.c) ---------- */

/* A reload this shard has not switched to yet: started by a SIGHUP the
 * main thread took, and neither in this shard nor finished (failed). */
bool shard_reload_pending(const struct shard *s)
{
	uint32_t started = atomic_load_explicit(&s->b->reload_started,
						memory_order_acquire);
	return started != s->reload_applied &&
	       started != atomic_load_explicit(&s->b->reload_done,
					       memory_order_acquire);
}

bool shard_reload_coming(const struct shard *s)
{
	if (shard_reload_pending(s))
		return true;
	/* SIGHUP is blocked in every thread: until the main thread's
	 * signalfd reads it (after counting it in reload_started), it waits
	 * as pending for the process. */
	sigset_t pending;
	return sigpending(&pending) == 0 && sigismember(&pending, SIGHUP) == 1;
}

void shard_park_input(struct shard *s, struct conn *c, uint8_t why)
{
	if (!c->parked && (c->flags & CONN_RECV_ARMED)) {
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_cancel64(sqe, ud_pack(UD_RECV, c->id, c->gen), 0);
		io_uring_sqe_set_data64(sqe, ud_pack(UD_CANCEL, c->id, c->gen));
	}
	if ((why & PARK_RELOAD) && !(c->parked & PARK_RELOAD))
		s->input_parked++;
	c->parked |= why;
}

bool shard_barrier_wait(struct shard *s, struct conn *c)
{
	assert(s->b->nshards > 1 && !(c->parked & PARK_BARRIER));
	if (s->barrier_n == s->barrier_cap) {
		uint32_t cap = s->barrier_cap ? s->barrier_cap * 2 : 16;
		struct barrier_waiter *w =
			realloc(s->barrier_waiters, cap * sizeof(*w));
		if (!w)
			return false;
		s->barrier_waiters = w;
		s->barrier_cap = cap;
	}
	/* The round in flight left before this SUBSCRIBE came: the next one. */
	s->barrier_waiters[s->barrier_n++] = (struct barrier_waiter){
		c->id, c->gen, s->barrier_round + 1};
	s->barrier_want = true;
	shard_park_input(s, c, PARK_BARRIER);
	return true;
}

void shard_queue_takeover(struct shard *s, struct takeover *t)
{
	t->next = NULL;
	t->queued_at = s->waits;
	s->takeover_next_turn = true;
	if (!s->takeovers)
		s->takeovers_tail = &s->takeovers;
	*s->takeovers_tail = t;
	s->takeovers_tail = &t->next;
}
