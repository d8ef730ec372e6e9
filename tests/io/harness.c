/* See harness.h. */
#include "tests/io/harness.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <urcu-qsbr.h>

#include "core/log.h"

/* What broker_start allocates, for one shard and without listeners. */
/* The clock every harness shard reads (one test thread, one shard). */
static uint64_t harness_now_ms;

static uint64_t harness_clock(void)
{
	return harness_now_ms;
}

void harness_set_now(struct harness *h, uint64_t now_ms)
{
	harness_now_ms = now_ms;
	h->s->now_ms = h->s->clock_ms(); /* as a turn starts */
}

void harness_tick(struct harness *h)
{
	h->s->now_ms = h->s->clock_ms();
	loop_tick(h->s);
	conn_settle(h->s);
}

static int harness_broker(struct harness *h, char *err, size_t errlen)
{
	struct broker *b = &h->b;

	broker_wire(); /* the layers' upcalls, as broker_start does */
	b->nshards = 1;
	b->cfg = &h->cfg;
	b->sec = security_load(&h->cfg, err, errlen);
	if (!b->sec)
		return -1;
	for (unsigned i = 0; i < KITE_LISTENERS_MAX; i++)
		b->listen_lock_fds[i] = -1;
	size_t rings = (size_t)(b->nshards + 1) * b->nshards;
	b->xrings = aligned_alloc(64, sizeof(struct xring) * rings);
	b->shards = calloc(b->nshards, sizeof(struct shard));
	b->gtrie = gtrie_new();
	b->retained = retain_new(msg_release_cb);
	if (!b->xrings || !b->shards || !b->gtrie || !b->retained) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < rings; i++) {
		atomic_init(&b->xrings[i].head, 0);
		atomic_init(&b->xrings[i].tail, 0);
	}
	pthread_mutex_init(&b->reg_lock, NULL);
	pthread_mutex_init(&b->ctl_lock, NULL);
	return 0;
}

int harness_init(struct harness *h, const char *config_text, char *err,
		 size_t errlen)
{
	memset(h, 0, sizeof(*h));
	config_defaults(&h->cfg);
	if (config_load_string(&h->cfg, "harness.conf", config_text, err,
			       errlen) < 0 ||
	    config_finalize(&h->cfg, err, errlen) < 0)
		return -1;
	h->cfg.shards = 1;
	log_configure(&h->cfg);
	if (harness_broker(h, err, errlen) < 0)
		return -1;
	rcu_register_thread();
	h->s = &h->b.shards[0];
	/* shard_init logs why io_uring is missing; the test says it too. */
	if (loop_init(h->s, &h->b, 0) < 0) {
		int ring_fd = h->s->ring.ring_fd;
		snprintf(err, errlen, "no io_uring for a shard here%s",
			 ring_fd > 0 ? "" : " (io_uring_queue_init failed)");
		return ring_fd > 0 ? -1 : 1;
	}
	h->s->clock_ms = harness_clock;
	harness_set_now(h, 1000000); /* any start: tests move it */
	return 0;
}

static void reg_entry_free_cb(struct htab_link *l)
{
	free(htab_entry(l, struct client_entry, link));
}

/* broker_stop's teardown, for the shard that never ran. */
void harness_fini(struct harness *h)
{
	struct broker *b = &h->b;

	if (h->s && h->s->ring.ring_fd > 0)
		loop_fini(h->s);
	loop_discard_pending(b);
	rcu_barrier_qsbr();
	if (b->retained)
		retain_free(b->retained);
	if (b->gtrie)
		gtrie_free(b->gtrie);
	rcu_barrier_qsbr();
	rcu_unregister_thread();
	htab_fini(&b->reg, reg_entry_free_cb);
	free(b->xrings);
	free(b->shards);
	security_free(b->sec);
}

struct hconn *harness_connect(struct harness *h)
{
	struct shard *s = h->s;
	struct hconn *hc = NULL;
	for (unsigned i = 0; i < HARNESS_CONNS_MAX && !hc; i++)
		if (!h->conns[i].used)
			hc = &h->conns[i];
	if (!hc)
		return NULL;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c || shard_conn_attach(s, c) < 0) {
		free(c);
		return NULL;
	}
	atomic_fetch_add(&h->b.listener_conns[0], 1);
	c->fd = -1;
	c->listener = 0;
	c->state = CONN_AWAIT_CONNECT;
	c->created_ms = c->last_rx_ms = s->now_ms;
	c->peer.sin6_family = AF_INET6;
	hc->used = true;
	hc->shutdown = false;
	hc->send_max = 0;
	hc->len = 0;
	hc->id = c->id;
	hc->gen = c->gen;
	return hc;
}

struct conn *harness_conn(struct harness *h, const struct hconn *hc)
{
	struct conn *c = shard_conn_lookup(h->s, hc->id, hc->gen);
	return c && c->state != CONN_CLOSING ? c : NULL;
}

void harness_input(struct harness *h, struct hconn *hc, const void *bytes,
		   size_t len)
{
	struct conn *c = harness_conn(h, hc);
	if (!c)
		return;
	conn_on_data(c, bytes, len);
	conn_settle(h->s);
}

static struct hconn *harness_find(struct harness *h, uint64_t ud)
{
	for (unsigned i = 0; i < HARNESS_CONNS_MAX; i++)
		if (h->conns[i].used && h->conns[i].id == ud_id(ud) &&
		    h->conns[i].gen == ud_gen(ud))
			return &h->conns[i];
	return NULL;
}

/* The bytes of one send SQE, appended to hc's capture. */
static size_t harness_take_send(struct hconn *hc,
				const struct io_uring_sqe *sqe)
{
	struct iovec one = {(void *)(uintptr_t)sqe->addr, sqe->len};
	const struct iovec *iov = &one;
	size_t n = 1, total = 0;

	if (sqe->opcode == IORING_OP_SENDMSG) {
		const struct msghdr *mh = (const void *)(uintptr_t)sqe->addr;
		iov = mh->msg_iov;
		n = mh->msg_iovlen;
	}
	size_t limit = hc && hc->send_max ? hc->send_max : SIZE_MAX;
	for (size_t i = 0; i < n && total < limit; i++) {
		size_t part = iov[i].iov_len < limit - total ? iov[i].iov_len
							     : limit - total;
		size_t room = hc ? HARNESS_OUT_MAX - hc->len : 0;
		size_t take = part < room ? part : room;
		if (take) {
			memcpy(hc->out + hc->len, iov[i].iov_base, take);
			hc->len += take;
		}
		total += part;
	}
	return total;
}

/* One pass over what the shard queued for the kernel: nothing of it is
 * submitted; sends and shutdowns complete at once, in order. */
static bool harness_complete(struct harness *h)
{
	struct io_uring_sq *sq = &h->s->ring.sq;
	unsigned mask = *sq->kring_entries - 1;
	uint64_t ud_done[256];
	int32_t res_done[256];
	unsigned nd = 0;

	for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++) {
		const struct io_uring_sqe *sqe = &sq->sqes[i & mask];
		uint64_t ud = sqe->user_data;
		struct hconn *hc = harness_find(h, ud);
		int32_t res;

		if (ud_op(ud) == UD_SEND) {
			res = (int32_t)harness_take_send(hc, sqe);
		} else if (ud_op(ud) == UD_SHUTDOWN) {
			res = 0;
			if (hc)
				hc->shutdown = true;
		} else {
			continue; /* receive arming, cancels, closes: dropped */
		}
		if (nd < 256) {
			ud_done[nd] = ud;
			res_done[nd++] = res;
		}
	}
	sq->sqe_tail = sq->sqe_head;
	for (unsigned i = 0; i < nd; i++) {
		struct io_uring_cqe cqe = {.user_data = ud_done[i],
					   .res = res_done[i]};
		loop_complete(h->s, &cqe);
		conn_settle(h->s);
	}
	return nd > 0;
}

size_t harness_output(struct harness *h, struct hconn *hc,
		      const uint8_t **bytes)
{
	/* A completion can queue more (the rest of the queue, a held
	 * SUBACK's retained messages, what a partial send left): turns
	 * until nothing moves. */
	for (int turns = 0; turns < 1 << 16; turns++) {
		loop_flush_dirty(h->s);
		if (!harness_complete(h) && !h->s->dirty)
			break;
	}
	*bytes = hc->out;
	size_t n = hc->len;
	hc->len = 0;
	return n;
}

void harness_close(struct harness *h, struct hconn *hc)
{
	struct conn *c = harness_conn(h, hc);
	const uint8_t *bytes;

	if (c)
		conn_close(c, "closed by the test", false);
	(void)harness_output(h, hc, &bytes);
	hc->used = false;
}
