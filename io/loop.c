/* The shard loop (io/loop.h): one thread, one io_uring, one CPU.
 *
 * Each turn: submit queued sends and cross-shard wakeups, wait, reap every
 * ready completion in one batch, run their handlers, drain the rings from
 * other shards, announce a QSBR quiescent state. */
#include <malloc.h>
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <urcu-qsbr.h>

#include "core/log.h"
#include "core/trie.h"
#include "ws/ws.h"
#include "io/bridge.h"
#include "io/cluster.h"
#include "io/conn.h"
#include "io/handle.h"
#include "io/loop.h"
#include "io/ktls.h"
#include "io/metrics.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/route.h"
#include "io/session.h"
#include "io/security-t.h"
#include "io/shard.h"
#include "io/share.h"
#include "io/sys.h"
#include "io/wsconn.h"

#define CQE_BATCH 256

static uint64_t now_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void shard_stop_all(struct shard *s);

/* ---- parked input and takeovers ------------------------------------------ */

static void shard_unpark_conn(struct shard *s, struct conn *c, uint8_t why)
{
	if (!(c->parked & why))
		return;
	if (why & c->parked & PARK_RELOAD)
		s->input_parked--;
	c->parked &= (uint8_t)~why;
	if (c->parked)
		return;
	uint32_t len;
	uint8_t *data = conn_take_input(c, &len);
	if (data)
		conn_on_plain(c, data, len);
	free(data);
	/* With its receive still being cancelled, the final completion
	 * re-arms it (or moves, or frees the connection). */
	if (c->flags & CONN_RECV_ARMED)
		return;
	if (c->state == CONN_CLOSING)
		conn_on_closed(c); /* may free c */
	else if (c->state == CONN_HANDOFF)
		connect_handoff_ready(s, c);
	else if (!c->parked && c->ktls != KTLS_STOPPING) {
		shard_arm_recv(s, c);
		c->recv_fresh = true;
	}
}

/* Cluster (the upcall cluster.c makes): a connection's session came from
 * another node; its CONNACK goes out and what it sent meanwhile runs. */
void loop_connect_resume(struct shard *s, struct conn *c, struct session *ss)
{
	connect_resume(s, c, ss);
	shard_unpark_conn(s, c, PARK_CLUSTER);
}

/* After this shard switched to the reloaded configuration (or the reload
 * failed): what the parked connections sent runs under it, and they are
 * read again. A SIGHUP that came meanwhile parks them once more. */
static void shard_unpark_input(struct shard *s)
{
	if (!s->input_parked || shard_reload_coming(s))
		return;
	for (uint32_t i = 0; i < s->conns_cap && s->input_parked; i++) {
		struct conn *c = s->conns[i];
		if (c && (c->parked & PARK_RELOAD))
			shard_unpark_conn(s, c, PARK_RELOAD);
	}
}

static void shard_takeover_done(struct shard *s, struct takeover *t);
static void shard_turn(struct shard *s, bool *tick);

/* ---- barriers (shard_barrier_wait) ---------------------------------------- */

static struct xitem barrier_item(uint8_t kind, uint32_t round, unsigned shard)
{
	return (struct xitem){kind, (void *)(((uintptr_t)round << 8) | shard)};
}

/* Before this turn's wait: a round for the SUBSCRIBEs parked since the
 * last one left, unless one is still out (they wait for the next). */
static void shard_barrier_post(struct shard *s)
{
	if (!s->barrier_want || s->barrier_acks)
		return;
	s->barrier_want = false;
	s->barrier_round++;
	s->barrier_acks = s->b->nshards - 1;
	for (unsigned dst = 0; dst < s->b->nshards; dst++)
		if (dst != s->idx)
			shard_post(s, dst, barrier_item(XK_BARRIER, s->barrier_round, s->idx));
}

/* Every other shard answered the round: its waiters' SUBSCRIBEs run. */
static void shard_barrier_done(struct shard *s)
{
	struct barrier_waiter *w = s->barrier_waiters;
	uint32_t n = s->barrier_n;
	/* Unparking runs what the clients sent, which may park again (and
	 * append here): work on the list as it was. */
	s->barrier_waiters = NULL;
	s->barrier_n = s->barrier_cap = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = shard_conn_lookup(s, w[i].conn_id, w[i].conn_gen);
		if (!c || !(c->parked & PARK_BARRIER))
			continue; /* gone meanwhile */
		if (w[i].round > s->barrier_round) {
			/* Parked after the round left: the next one. */
			c->parked &= (uint8_t)~PARK_BARRIER;
			if (shard_barrier_wait(s, c))
				continue;
			c->parked |= PARK_BARRIER; /* out of memory: go on now */
		}
		c->barrier_passed = true;
		shard_unpark_conn(s, c, PARK_BARRIER);
	}
	free(w);
}

/* A ring item (another shard's question, main's stop) can be seen
 * before the completions of what clients sent before it: DEFER_TASKRUN
 * runs their task work on our next enter. This serves them now. */
static void shard_serve_earlier_input(struct shard *s, bool *tick)
{
	io_uring_get_events(&s->ring);
	shard_turn(s, tick);
}

/* Asked by other shards: once what reached this shard before their
 * question has been served, answer. */
static void shard_barrier_answer(struct shard *s, bool *tick)
{
	shard_serve_earlier_input(s, tick);
	s->barrier_asked = false;
	for (unsigned src = 0; src < s->b->nshards; src++)
		if (s->barrier_ask[src]) {
			shard_post(s, src, barrier_item(XK_BARRIER_ACK,
							s->barrier_ask[src], s->idx));
			s->barrier_ask[src] = 0;
		}
}

static void shard_handle_xitem(struct shard *s, struct xitem it)
{
	switch (it.kind) {
	case XK_DELIVER:
		route_local(s, it.ptr, NULL);
		msg_unref(it.ptr);
		break;
	case XK_DELIVER_T: {
		struct persist_ticket *t = it.ptr;
		struct msg *m = t->msg;
		route_local(s, m, t);
		msg_unref(m);
		persist_ticket_settle(s, t); /* once what it logged is durable */
		break;
	}
	case XK_RETAIN_T:
		persist_on_retained(s, it.ptr);
		break;
	case XK_TICKET:
		persist_ticket_done(s, it.ptr);
		break;
	case XK_Q2_RELEASE:
		persist_on_q2_release(s, it.ptr);
		break;
	case XK_TAKEOVER:
		shard_queue_takeover(s, it.ptr);
		break;
	case XK_TAKEN:
		shard_takeover_done(s, it.ptr);
		break;
	case XK_KICK:
		session_kick(s, it.ptr);
		break;
	case XK_ADOPT:
		connect_adopt(s, it.ptr);
		break;
	case XK_SHARE_JOIN:
	case XK_SHARE_LEAVE:
	case XK_SHARE_DELIVER:
	case XK_SHARE_RETRY:
	case XK_SHARE_ACK:
		share_on_item(s, it.kind, it.ptr);
		break;
	case XK_STOP:
		s->stop_pending = true;
		break;
	case XK_RELOAD: {
		const struct snapshot *snap = it.ptr;
		s->cfg = snap->cfg;
		s->sec = snap->sec;
		s->reload_applied = snap->reload;
		/* Every session's rules under the new ACL, once, here: not by
		 * its first delivery in the middle of a fan-out. */
		for (struct session *ss = s->sessions; ss; ss = ss->next) {
			session_acl(ss);
			session_recheck_reads(ss);
		}
		atomic_fetch_add(&s->b->reload_acks, 1);
		session_pump_deferred(s);
		shard_unpark_input(s);
		break;
	}
	case XK_BARRIER: {
		uintptr_t v = (uintptr_t)it.ptr;
		assert((v & 0xff) < s->b->nshards && (v & 0xff) != s->idx);
		s->barrier_ask[v & 0xff] = (uint32_t)(v >> 8);
		s->barrier_asked = true;
		break;
	}
	case XK_BARRIER_ACK: {
		uint32_t round = (uint32_t)((uintptr_t)it.ptr >> 8);
		assert(round == s->barrier_round && s->barrier_acks > 0);
		if (--s->barrier_acks == 0)
			shard_barrier_done(s);
		break;
	}
	default:
		assert(!"unknown cross-shard item");
	}
}

static void shard_drain_rings(struct shard *s)
{
	for (unsigned src = 0; src <= s->b->nshards; src++) {
		if (src == s->idx)
			continue;
		struct xring *r = shard_xring(s->b, src, s->idx);
		uint32_t head = atomic_load_explicit(&r->head,
						     memory_order_relaxed);
		uint32_t tail = atomic_load_explicit(&r->tail,
						     memory_order_acquire);
		while (head != tail) {
			struct xitem it = r->items[head & (XRING_SLOTS - 1)];
			head++;
			atomic_store_explicit(&r->head, head,
					      memory_order_release);
			shard_handle_xitem(s, it);
			conn_settle(s);
		}
	}
}

/* On the new connection's shard: the old one is gone, the new one goes on. */
static void shard_takeover_done(struct shard *s, struct takeover *t)
{
	struct conn *c = shard_conn_lookup(s, t->conn_id, t->conn_gen);
	free(t);
	if (c)
		shard_unpark_conn(s, c, PARK_TAKEOVER);
}

/* An old connection that is parked itself (a takeover or a reload of
 * its own) has not run what it sent yet: its kick waits until it has,
 * and the new connection with it. */
static void shard_run_takeovers(struct shard *s)
{
	struct takeover *t = s->takeovers, *waiting = NULL, **tail = &waiting;
	s->takeovers = NULL;
	s->takeover_next_turn = false;
	while (t) {
		struct takeover *next = t->next;
		struct conn *oc = t->old->conn;
		/* Its receive, just armed again, has not returned what waits
		 * in the socket: one more turn (the completion wakes it). */
		bool fresh = oc && oc->recv_fresh;
		if (oc)
			oc->recv_fresh = false;
		/* Queued since this turn's wait: bytes the old client sent
		 * before the new CONNECT may sit in the socket, their receive
		 * deferred to the next enter (a loaded shard). */
		bool unseen = t->queued_at == s->waits;
		if (oc && (oc->parked || fresh || unseen)) {
			/* A parked one waits for its unpark (a reload's or a
			 * hand-off's item wakes the shard), not for a turn: a
			 * reload would otherwise keep the wait at 1 ms. */
			if (!oc->parked)
				s->takeover_next_turn = true;
			t->next = NULL;
			*tail = t;
			tail = &t->next;
		} else {
			session_kick(s, t->old);
			if (t->from == s->idx)
				shard_takeover_done(s, t);
			else
				shard_post(s, t->from, (struct xitem){XK_TAKEN, t});
		}
		t = next;
	}
	s->takeovers = waiting;
	s->takeovers_tail = waiting ? tail : &s->takeovers;
}

/* ---- completions --------------------------------------------------------- */

/* Listening sockets are watched through an epoll set and accepted from
 * with accept4, not by multishot accepts: a pending io_uring request
 * holds its socket until the kernel tears the ring down, after a killed
 * kite is gone, and in those 20-45 ms clients completed their handshake
 * on the dead kite's socket and were reset. An epoll set holds no
 * reference, so the sockets close with the process and such clients get
 * "connection refused" and try again, as with Mosquitto. */
static void shard_arm_accept_poll(struct shard *s)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_poll_multishot(sqe, s->accept_ep, POLLIN);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_ACCEPT, 0, 0));
	s->accept_poll_armed = true;
}

/* Level-triggered: clients already waiting are reported at once. */
static void shard_arm_accept(struct shard *s, unsigned li)
{
	uint64_t bit = 1ull << li;
	if (s->accept_watched & bit)
		return;
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = li};
	if (epoll_ctl(s->accept_ep, EPOLL_CTL_ADD, s->listen_fds[li], &ev) < 0) {
		log_msg(KITE_LOG_ERR, "shard %u: cannot watch listener %u: %s",
			s->idx, li, strerror(errno));
		s->accept_paused |= bit; /* the tick tries again */
		return;
	}
	s->accept_watched |= bit;
	if (!s->accept_poll_armed)
		shard_arm_accept_poll(s);
}

static void shard_unwatch_listener(struct shard *s, unsigned li)
{
	uint64_t bit = 1ull << li;
	if (!(s->accept_watched & bit))
		return;
	epoll_ctl(s->accept_ep, EPOLL_CTL_DEL, s->listen_fds[li], NULL);
	s->accept_watched &= ~bit;
}

static void shard_peer(int fd, struct sockaddr_in6 *peer)
{
	struct sockaddr_storage ss;
	socklen_t alen = sizeof(ss);
	memset(peer, 0, sizeof(*peer));
	if (getpeername(fd, (struct sockaddr *)&ss, &alen) < 0)
		return;
	if (ss.ss_family == AF_INET6) {
		memcpy(peer, &ss, sizeof(*peer));
	} else if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a4 = (const void *)&ss;
		peer->sin6_family = AF_INET6;
		peer->sin6_port = a4->sin_port;
		peer->sin6_addr.s6_addr[10] = 0xff;
		peer->sin6_addr.s6_addr[11] = 0xff;
		memcpy(&peer->sin6_addr.s6_addr[12], &a4->sin_addr, 4);
	}
}

/* Out of descriptors (or kernel memory) for new clients: accepting
 * again at once would fail again at once, a busy loop. */
static bool accept_error_is_exhaustion(int err)
{
	return err == EMFILE || err == ENFILE || err == ENOMEM ||
	       err == ENOBUFS;
}

/* Refused clients cost one line per log window, whatever their number,
 * then one saying how many more there were. */
static void shard_count_refused(struct shard *s, unsigned li, int err,
				uint32_t n)
{
	const struct kite_listener_cfg *l = &s->cfg->listeners[li];
	stat_add(&s->stats.refused_no_resources, n);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t left_out;
		if (!log_limit_take(&s->accept_log, s->now_ms, 1, &left_out))
			continue;
		if (left_out)
			log_msg(KITE_LOG_WARNING, "%u more clients refused at "
				"accept in the last %u s.", left_out,
				LOG_LIMIT_WINDOW_MS / 1000);
		log_msg(KITE_LOG_WARNING,
			"Refusing new clients on port %u: %s; closing them at "
			"once, trying again every %u ms.", l->port,
			strerror(err), SHARD_TICK_MS);
	}
}

/* Until the next tick, every client of this listener is accepted into a
 * free slot of the ring's file table and closed at once: it hears
 * "refused" instead of waiting in the backlog until it gives up. The
 * slots belong to this ring alone, so unlike a spare descriptor no other
 * thread can take them, and they need no descriptor. */
static void shard_arm_refuse(struct shard *s, unsigned li)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_multishot_accept_direct(sqe, s->listen_fds[li], NULL,
					      NULL, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_REFUSE, li, ++s->refuse_gen[li]));
	s->refusing |= 1ull << li;
	s->refuse_progress &= ~(1ull << li);
}

static void shard_cancel_refuse(struct shard *s, unsigned li)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	io_uring_prep_cancel64(sqe, ud_pack(UD_REFUSE, li, s->refuse_gen[li]), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_CANCEL, 0, 0));
}

/* Descriptors are freed by every shard: a refusing one checks for a
 * free one at each client it turns away, so as to stop refusing as soon
 * as a client could be served rather than at the next tick. */
static bool shard_fd_available(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static void shard_on_refuse(struct shard *s, unsigned li,
			    struct io_uring_cqe *cqe)
{
	uint64_t bit = 1ull << li;
	bool current = (s->refusing & bit) &&
		       ud_gen(cqe->user_data) == s->refuse_gen[li];
	if (cqe->res >= 0) {
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_close_direct(sqe, (unsigned)cqe->res);
		io_uring_sqe_set_data64(sqe, ud_pack(UD_CLOSE, 0, 0));
		s->refuse_progress |= bit;
		if (!s->stopping)
			shard_count_refused(s, li, s->refuse_err, 1);
		if (current && (cqe->flags & IORING_CQE_F_MORE) &&
		    !s->stopping && shard_fd_available()) {
			shard_cancel_refuse(s, li);
			s->refusing &= ~bit;
			shard_arm_accept(s, li);
			return;
		}
	}
	if ((cqe->flags & IORING_CQE_F_MORE) || !current)
		return; /* still refusing, or this one was ended */
	s->refusing &= ~bit;
	if (s->stopping || s->listen_fds[li] < 0)
		return;
	/* Every slot awaits its close, queued above, ahead of this accept.
	 * Only after progress: an ENFILE for want of files would repeat. */
	if (cqe->res == -ENFILE && (s->refuse_progress & bit))
		shard_arm_refuse(s, li);
	else
		s->accept_paused |= bit; /* the tick accepts again */
}

/* Without a file table (an old kernel): the clients waiting now are
 * accepted on the spare descriptor and closed. */
static void shard_refuse_backlog(struct shard *s, unsigned li, int err)
{
	uint32_t refused = 0;
	if (s->spare_fd < 0)
		return;
	close(s->spare_fd);
	for (;;) {
		int fd = accept4(s->listen_fds[li], NULL, NULL,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			break;
		close(fd);
		refused++;
	}
	/* Another thread may take the freed number first: then every tick
	 * tries again (shard_resume_accepts). */
	s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	shard_count_refused(s, li, err, refused);
}

/* False: stop accepting from this listener for now. */
static bool shard_on_accept_error(struct shard *s, unsigned li, int err)
{
	if (s->stopping)
		return false;
	if (!accept_error_is_exhaustion(err)) {
		/* One client's problem (ECONNABORTED, EPERM from a firewall):
		 * the next one may be fine. */
		uint32_t left_out;
		if (log_limit_take(&s->accept_log, s->now_ms, 10, &left_out))
			log_msg(KITE_LOG_WARNING, "accept failed: %s", strerror(err));
		return true;
	}
	/* Still ready, yet accept would fail again: a busy loop. */
	shard_unwatch_listener(s, li);
	s->refuse_err = err;
	if (s->refuse_slots && !(s->refusing & (1ull << li))) {
		shard_arm_refuse(s, li);
		return false;
	}
	if (!s->refuse_slots)
		shard_refuse_backlog(s, li, err);
	s->accept_paused |= 1ull << li;
	return false;
}

/* Each tick while descriptors are short: stop refusing and watch the
 * listener again (if still short, its next client fails to be accepted
 * and the refusing starts again). */
static void shard_resume_accepts(struct shard *s)
{
	uint64_t refusing = s->refusing;
	uint64_t resume = s->accept_paused | refusing;
	s->accept_paused = s->refusing = 0;
	if (!s->refuse_slots && s->spare_fd < 0)
		s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (!s->stopping && s->accept_watched && !s->accept_poll_armed)
		shard_arm_accept_poll(s);
	while (resume) {
		unsigned li = (unsigned)__builtin_ctzll(resume);
		resume &= resume - 1;
		if (refusing & (1ull << li))
			shard_cancel_refuse(s, li);
		if (!s->stopping && s->listen_fds[li] >= 0)
			shard_arm_accept(s, li);
	}
	uint32_t left_out = log_limit_flush(&s->accept_log, s->now_ms);
	if (left_out)
		log_msg(KITE_LOG_WARNING, "%u more clients refused at accept "
			"in the last %u s.", left_out, LOG_LIMIT_WINDOW_MS / 1000);
	left_out = log_limit_flush(&s->max_conn_log, s->now_ms);
	if (left_out)
		log_msg(KITE_LOG_NOTICE, "%u more client connections denied: "
			"max_connections exceeded (last %u s).", left_out,
			LOG_LIMIT_WINDOW_MS / 1000);
}

/* Mosquitto's line, rate-limited: a crowd at the limit is one line. */
static void shard_deny_max_connections(struct shard *s, int fd)
{
	uint32_t left_out;
	stat_add(&s->stats.refused_max_connections, 1);
	if (!s->cfg->connection_messages ||
	    !log_limit_take(&s->max_conn_log, s->now_ms, 10, &left_out))
		return;
	struct conn tmp = {.shard = s};
	char peer[64];
	shard_peer(fd, &tmp.peer);
	if (left_out)
		log_msg(KITE_LOG_NOTICE, "%u more client connections denied: "
			"max_connections exceeded (last %u s).", left_out,
			LOG_LIMIT_WINDOW_MS / 1000);
	log_msg(KITE_LOG_NOTICE,
		"Client connection from %s denied: max_connections exceeded.",
		conn_peer_str(&tmp, peer, sizeof(peer)));
}

static void shard_on_accept(struct shard *s, unsigned li, int fd)
{
	const struct kite_listener_cfg *l = &s->cfg->listeners[li];
	if (l->protocol == LISTENER_PROTO_METRICS) {
		metrics_on_accept(s, li, fd);
		return;
	}
	uint32_t n = atomic_fetch_add(&s->b->listener_conns[li], 1) + 1;
	if (s->stopping || (l->max_connections >= 0 &&
			    n > (uint32_t)l->max_connections)) {
		atomic_fetch_sub(&s->b->listener_conns[li], 1);
		if (!s->stopping)
			shard_deny_max_connections(s, fd);
		close(fd);
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	struct tls_server *srv = li < s->sec->count ? s->sec->tls[li] : NULL;
	if (c && srv && !(c->tls = tls_conn_new(srv))) {
		free(c);
		c = NULL;
	}
	if (c && l->protocol == LISTENER_PROTO_WEBSOCKETS &&
	    wsconn_attach(c, s->cfg, l) < 0) {
		tls_conn_free(c->tls);
		free(c);
		c = NULL;
	}
	if (!c || shard_conn_attach(s, c) < 0) {
		if (c) {
			tls_conn_free(c->tls);
			ws_conn_free(c->ws);
		}
		free(c);
		atomic_fetch_sub(&s->b->listener_conns[li], 1);
		shard_count_refused(s, li, ENOMEM, 1);
		close(fd);
		return;
	}
	c->fd = fd;
	c->listener = (uint8_t)li;
	c->state = CONN_AWAIT_CONNECT;
	c->created_ms = c->last_rx_ms = (uint32_t)s->now_ms;
	c->proxy_await = (uint8_t)l->proxy_protocol;
	shard_peer(fd, &c->peer);
	/* kite writes a turn's packets in one send, so Nagle only delays
	 * them; set_tcp_nodelay false asks for it anyway. */
	int nodelay = s->cfg->set_tcp_nodelay;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof(nodelay));
	shard_arm_recv(s, c);
}

static void shard_accept_ready(struct shard *s, unsigned li)
{
	for (unsigned i = 0; i < SHARD_ACCEPT_BATCH; i++) {
		if (!(s->accept_watched & (1ull << li)))
			return;
		int fd = accept4(s->listen_fds[li], NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			shard_on_accept(s, li, fd);
		else if (errno == EAGAIN || errno == EWOULDBLOCK ||
			 !shard_on_accept_error(s, li, errno))
			return;
	}
	if (!s->accept_more) { /* more next turn, after the rest */
		s->accept_more = true;
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_nop(sqe);
		io_uring_sqe_set_data64(sqe, ud_pack(UD_ACCEPT, 1, 0));
	}
}

/* Also run every tick: a missed wakeup costs a client at most a tick. */
static void shard_accept_sweep(struct shard *s)
{
	struct epoll_event ev[KITE_LISTENERS_MAX];
	if (s->stopping || !s->accept_watched)
		return;
	int n = epoll_wait(s->accept_ep, ev, KITE_LISTENERS_MAX, 0);
	for (int i = 0; i < n; i++)
		if (ev[i].data.u32 < KITE_LISTENERS_MAX)
			shard_accept_ready(s, ev[i].data.u32);
}

static void shard_on_accept_cqe(struct shard *s, uint32_t id,
				struct io_uring_cqe *cqe)
{
	if (id == 1) {
		s->accept_more = false;
	} else if (!(cqe->flags & IORING_CQE_F_MORE)) {
		/* Ended after reporting (an overflowing completion queue):
		 * again now; ended by an error: at the tick, not in a loop. */
		s->accept_poll_armed = false;
		if (!s->stopping && s->accept_watched && cqe->res >= 0)
			shard_arm_accept_poll(s);
	}
	shard_accept_sweep(s);
}

/* liburing 2.3's headers predate incremental buffer consumption. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

static void shard_recycle_buf(struct shard *s, unsigned bid)
{
	assert(bid < SHARD_RECV_BUFS);
	io_uring_buf_ring_add(s->br, s->recv_bufs + (size_t)bid * SHARD_RECV_BUF_SIZE,
			      SHARD_RECV_BUF_SIZE, (unsigned short)bid,
			      io_uring_buf_ring_mask(SHARD_RECV_BUFS),
			      (int)s->recv_bufs_used++);
}

static void shard_on_recv(struct shard *s, struct io_uring_cqe *cqe)
{
	struct conn *c = shard_conn_get(s, cqe->user_data);
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		assert(bid < SHARD_RECV_BUFS);
		unsigned off = s->recv_off[bid];
		if (cqe->res > 0) {
			assert(off + (unsigned)cqe->res <= SHARD_RECV_BUF_SIZE);
			s->recv_off[bid] = (uint16_t)(off + (unsigned)cqe->res);
		}
		if (c && cqe->res > 0) {
			uint16_t ago = (uint16_t)(s->turn_stamp -
				  s->sent_at[c->id % SHARD_SENT_SLOTS]);
			s->turn_recvs++;
			s->turn_answered += ago <= SHARD_GATHER_BUSY_US * 1000ull /
							   SHARD_SENT_UNIT_NS;
			stat_add(&s->stats.bytes_received, (uint64_t)cqe->res);
			conn_on_data(c, s->recv_bufs +
					       (size_t)bid * SHARD_RECV_BUF_SIZE + off,
				     (size_t)cqe->res);
		}
		/* Incremental: the kernel keeps filling the rest of it. An
		 * end or an error consumed nothing of it. */
		if (cqe->res > 0 && !(cqe->flags & IORING_CQE_F_BUF_MORE)) {
			s->recv_off[bid] = 0;
			shard_recycle_buf(s, bid);
		}
	}
	if (!c)
		return;
	if (!more)
		c->flags &= (uint8_t)~CONN_RECV_ARMED;
	/* A parked connection's end waits for what it sent before: its
	 * receive, armed again when it is unparked, sees the end again. */
	if (cqe->res == 0 && c->state != CONN_CLOSING && !c->parked)
		conn_close(c, "closed by client", true);
	else if (cqe->res == -EIO && c->ktls == KTLS_ON &&
		 c->state != CONN_CLOSING)
		ktls_control_record(c);
	else if (cqe->res < 0 && cqe->res != -ENOBUFS &&
		 /* Only kite cancels a receive (pause, park, kTLS, hand-off),
		  * and it may have resumed before the cancel completed. */
		 cqe->res != -ECANCELED &&
		 c->state != CONN_CLOSING && c->state != CONN_HANDOFF)
		conn_close(c, strerror(-cqe->res), true);
	else if (!more && c->ktls == KTLS_STOPPING && c->state == CONN_ACTIVE)
		ktls_try(c); /* recv stopped: install the keys */
	else if (!more && c->state == CONN_HANDOFF)
		connect_handoff_ready(s, c); /* recv stopped: move it */
	else if (!more && c->state != CONN_CLOSING)
		shard_arm_recv(s, c); /* ENOBUFS or the kernel ended it */
	if (c->state == CONN_CLOSING)
		conn_on_closed(c);
}

void loop_complete(struct shard *s, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	struct conn *c;
	switch (ud_op(ud)) {
	case UD_ACCEPT:
		shard_on_accept_cqe(s, ud_id(ud), cqe);
		break;
	case UD_RECV:
		shard_on_recv(s, cqe);
		break;
	case UD_SEND:
		if ((c = shard_conn_get(s, ud)))
			conn_on_send_done(c, cqe->res);
		break;
	case UD_SHUTDOWN:
		if ((c = shard_conn_get(s, ud))) {
			c->flags &= (uint8_t)~CONN_SHUTDOWN_BUSY;
			if (c->state == CONN_CLOSING)
				conn_on_closed(c);
		}
		break;
	case UD_CANCEL:
	case UD_CLOSE:
		break;
	case UD_TICK:
		break; /* handled after the batch */
	case UD_PERSIST:
		persist_on_cqe(s, ud_id(ud), cqe->res);
		break;
	case UD_METRICS:
		metrics_on_cqe(s, ud_id(ud), ud_gen(ud), cqe->res);
		break;
	case UD_REFUSE:
		shard_on_refuse(s, ud_id(ud), cqe);
		break;
	case UD_BRIDGE:
		bridge_on_connect_cqe(s, ud_id(ud), ud_gen(ud), cqe->res);
		break;
	case UD_WAKE:
		if (ud_id(ud) == 1 && cqe->res < 0)
			log_msg(KITE_LOG_ERR, "shard %u: wakeup failed: %s",
				s->idx, strerror(-cqe->res));
		break; /* the rings are drained every turn */
	default:
		assert(!"unknown completion");
	}
}

static void shard_arm_tick(struct shard *s)
{
	struct io_uring_sqe *sqe = shard_sqe(s);
	s->tick_ts.tv_sec = 0;
	s->tick_ts.tv_nsec = SHARD_TICK_MS * 1000000ll;
	io_uring_prep_timeout(sqe, &s->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_TICK, 0, 0));
}

/* Keepalive (1.5 x the client's value, spec 3.1.2.10) and the CONNECT
 * deadline, checked once per tick over the shard's connections. */
static void shard_check_timeouts(struct shard *s)
{
	for (uint32_t i = 0; i < s->conns_cap; i++) {
		struct conn *c = s->conns[i];
		if (!c || c->state == CONN_HANDOFF)
			continue;
		if (c->state == CONN_CLOSING) {
			/* Last words that the client will not read. */
			if (conn_ms_since(s->now_ms, c->last_rx_ms) > 2000)
				conn_shutdown(c);
			continue;
		}
		if (c->state == CONN_AWAIT_CONNECT) {
			uint32_t age = conn_ms_since(s->now_ms, c->created_ms);
			if (c->proxy_await && age > CONN_PROXY_TIMEOUT_MS) {
				conn_strike(c);
				conn_close(c, "no PROXY header in time", false);
			} else if (age > CONN_CONNECT_TIMEOUT_MS) {
				conn_strike(c);
				if (c->tls && !tls_conn_handshake_done(c->tls))
					stat_add(&s->stats.tls_handshakes[TLS_HS_TIMEOUT], 1);
				conn_close(c, c->tls && !tls_conn_handshake_done(c->tls)
						      ? "TLS handshake timed out"
						      : c->bridge ? "no CONNACK in time"
						      : "no CONNECT in time",
					   false);
			}
			continue;
		}
		if (c->in_paused || c->parked)
			c->last_rx_ms = (uint32_t)s->now_ms; /* kite is not reading it */
		if (c->keepalive_s &&
		    conn_ms_since(s->now_ms, c->last_rx_ms) >
			    (uint32_t)c->keepalive_s * 1500u) {
			conn_protocol_error(c, MQTT_RC_KEEP_ALIVE_TIMEOUT,
					    "exceeded timeout");
			continue;
		}
		/* An idle connection keeps no wire queue; a subscriber keeps
		 * its queue for a while (conn.outq_keep). */
		if (!c->out_count && c->outq && !(c->flags & CONN_SEND_BUSY) &&
		    !(c->outq_keep && c->outq_keep--)) {
			free(c->outq);
			c->outq = NULL;
			c->out_cap = c->out_head = 0;
		}
	}
}

/* Whichever allocator serves malloc: jemalloc (release builds) keeps
 * glibc's arenas empty, so mallinfo2 would read ~0 there; ASan owns malloc
 * in sanitizer builds. Weak, so each is used only when linked. */
extern int mallctl(const char *name, void *oldp, size_t *oldlenp,
		   void *newp, size_t newlen) __attribute__((weak));
extern size_t __sanitizer_get_current_allocated_bytes(void)
	__attribute__((weak));

static uint64_t shard_heap_in_use(void)
{
	if (mallctl) {
		uint64_t epoch = 1;
		size_t sz = sizeof(epoch);
		size_t allocated = 0, asz = sizeof(allocated);
		/* jemalloc's statistics move only when the epoch does. */
		if (mallctl("epoch", &epoch, &sz, &epoch, sz) == 0 &&
		    mallctl("stats.allocated", &allocated, &asz, NULL, 0) == 0)
			return allocated;
	}
	if (__sanitizer_get_current_allocated_bytes)
		return __sanitizer_get_current_allocated_bytes();
	struct mallinfo2 mi = mallinfo2();
	return (uint64_t)mi.uordblks + mi.hblkhd;
}

void loop_tick(struct shard *s)
{
	if (s->idx == 0 && s->cfg->memory_limit) {
		/* Measuring walks the allocator's arenas under their locks:
		 * once a tick by one shard, never per message. */
		atomic_store_explicit(&s->b->heap_bytes, shard_heap_in_use(),
				      memory_order_relaxed);
	}
	shard_resume_accepts(s);
	shard_accept_sweep(s);
	session_pump_deferred(s); /* after a reload that failed */
	shard_unpark_input(s);
	shard_check_timeouts(s);
	conn_pools_trim(s);
	metrics_tick(s);
	persist_tick(s);
	session_check_timers(s); /* returns at once unless one is due */
	bridge_tick(s);
	if (s->idx == 0 && s->cfg->sys_interval_s &&
	    s->now_ms - s->last_sys_ms >= s->cfg->sys_interval_s * 1000ull) {
		s->last_sys_ms = s->now_ms;
		sys_publish(s);
	}
}

/* At SIGTERM: whether to serve on because deliveries await their
 * acknowledgement. A peer's PUBACK, PUBREC or PUBCOMP may be on its way:
 * a remote broker acknowledges a bridge's message only once the message is
 * durable there, which can be after its subscriber has it and after
 * whoever watches that subscriber restarts us. Stopping at once would send
 * the message again after the restart, a duplicate for the subscriber
 * (Mosquitto's 06-bridge-clean-session saw it). The connections that owe
 * an acknowledgement at the signal are named once; the shard serves on,
 * as if the signal had come later, until each paid, closed or went
 * elsewhere, or SHARD_STOP_ACK_WAIT_MS passed. More than
 * SHARD_STOP_ACK_CONNS of them: a busy broker, which stops at once. */
static bool shard_acks_awaited(struct shard *s)
{
	if (!s->stop_acks_listed) {
		s->stop_acks_listed = true;
		s->stop_acks_deadline_ms = s->now_ms + SHARD_STOP_ACK_WAIT_MS;
		for (uint32_t i = 0; i < s->conns_cap; i++) {
			const struct conn *c = s->conns[i];
			if (!c || c->state != CONN_ACTIVE || !c->session ||
			    !c->session->inflight_count)
				continue;
			if (s->stop_acks_n == SHARD_STOP_ACK_CONNS) {
				s->stop_acks_n = 0;
				return false;
			}
			s->stop_acks_id[s->stop_acks_n] = c->id;
			s->stop_acks_gen[s->stop_acks_n++] = c->gen;
		}
	}
	if (s->now_ms >= s->stop_acks_deadline_ms)
		return false;
	for (unsigned k = 0; k < s->stop_acks_n;) {
		const struct conn *c = s->stop_acks_id[k] < s->conns_cap
					       ? s->conns[s->stop_acks_id[k]]
					       : NULL;
		if (c && c->gen == s->stop_acks_gen[k] && c->state == CONN_ACTIVE &&
		    c->session && c->session->inflight_count) {
			k++;
			continue;
		}
		s->stop_acks_n--;
		s->stop_acks_id[k] = s->stop_acks_id[s->stop_acks_n];
		s->stop_acks_gen[k] = s->stop_acks_gen[s->stop_acks_n];
	}
	return s->stop_acks_n > 0;
}

static void shard_stop_all(struct shard *s)
{
	if (s->stopping)
		return;
	s->stopping = true;
	for (unsigned li = 0; li < s->cfg->listener_count; li++) {
		if (s->listen_fds[li] >= 0) {
			shard_unwatch_listener(s, li);
			if (s->refusing & (1ull << li))
				shard_cancel_refuse(s, li);
			io_uring_submit(&s->ring);
			close(s->listen_fds[li]);
			s->listen_fds[li] = -1;
		}
	}
	if (s->accept_poll_armed) {
		struct io_uring_sqe *sqe = shard_sqe(s);
		io_uring_prep_cancel64(sqe, ud_pack(UD_ACCEPT, 0, 0), 0);
		io_uring_sqe_set_data64(sqe, ud_pack(UD_CANCEL, 0, 0));
	}
	for (uint32_t i = 0; i < s->conns_cap; i++)
		if (s->conns[i] && s->conns[i]->state != CONN_CLOSING)
			conn_protocol_error(s->conns[i],
					    MQTT_RC_SERVER_SHUTTING_DOWN,
					    "broker shutting down");
}

void loop_flush_dirty(struct shard *s)
{
	while (s->dirty) {
		struct conn *c = s->dirty;
		s->sent_at[c->id % SHARD_SENT_SLOTS] = s->turn_stamp;
		s->dirty = c->dirty_next;
		c->dirty_next = NULL;
		c->flags &= (uint8_t)~CONN_DIRTY;
		conn_flush(c);
	}
}

static void shard_turn(struct shard *s, bool *tick)
{
	struct io_uring_cqe *cqes[CQE_BATCH];
	unsigned n = io_uring_peek_batch_cqe(&s->ring, cqes, CQE_BATCH);
	s->now_ms = s->clock_ms();
	s->recv_bufs_used = 0;
	for (unsigned i = 0; i < n; i++) {
		if (ud_op(cqes[i]->user_data) == UD_TICK)
			*tick = true;
		loop_complete(s, cqes[i]);
		conn_settle(s);
	}
	io_uring_cq_advance(&s->ring, n);
	if (s->recv_bufs_used)
		io_uring_buf_ring_advance(s->br, (int)s->recv_bufs_used);
}

#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

/* Submits the turn's requests and waits in one io_uring_enter. Without
 * gathering, a client publishing every 100 us costs a sleep, a wake-up
 * (on a VM, exits to the hypervisor) and a send per message: at 10,000
 * messages a second that is most of the broker's CPU. With it, arrivals
 * within SHARD_GATHER_US of each other share one turn. liburing 2.3
 * cannot pass a minimum wait (the field is still `pad` in its header),
 * so the SQ tail is published here as io_uring_submit does. */
static void shard_wait(struct shard *s, bool backlog)
{
	struct io_uring_sq *sq = &s->ring.sq;
	if (sq->sqe_head != sq->sqe_tail) {
		sq->sqe_head = sq->sqe_tail;
		__atomic_store_n(sq->ktail, sq->sqe_tail, __ATOMIC_RELEASE);
	}
	unsigned submit = *sq->ktail - *sq->khead;
	/* A turn with data decides: mostly from clients kite had just
	 * answered (they wait for it), or mostly on their own clock. */
	if (s->turn_recvs)
		s->clients_wait = s->turn_answered * 2 >= s->turn_recvs;
	s->turn_recvs = s->turn_answered = 0;
	bool gather = s->min_wait_ok && !backlog && !s->clients_wait &&
		      s->last_wait_ns < SHARD_GATHER_BUSY_US * 1000ull;
	uint64_t start = now_monotonic_ns();
	/* The general timeout only bounds the wait (the tick wakes the
	 * shard anyway); a minimum wait needs one to fall back on. */
	struct __kernel_timespec ts = {.tv_sec = backlog ? 0 : 1,
				       .tv_nsec = backlog ? 1000000 : 0};
	struct io_uring_getevents_arg arg = {
		.sigmask = 0,
		.sigmask_sz = _NSIG / 8,
		.pad = gather ? SHARD_GATHER_US : 0, /* min_wait_usec */
		.ts = (uint64_t)(uintptr_t)&ts,
	};
	long ret = syscall(__NR_io_uring_enter, s->ring.ring_fd, submit,
			   gather ? SHARD_GATHER_NR : 1u,
			   IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg,
			   sizeof(arg));
	if (ret < 0 && errno == EINVAL && gather) {
		/* A kernel that advertises it yet refuses: no more tries. */
		s->min_wait_ok = false;
	}
	uint64_t end = now_monotonic_ns();
	s->turn_stamp = (uint16_t)(end / SHARD_SENT_UNIT_NS);
	s->last_wait_ns = end - start;
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;
	/* pin_shards: shard i runs on the i-th CPU kite was allowed
	 * (taskset, cgroups) and nowhere else. Otherwise the scheduler may
	 * move a shard off a CPU that another process keeps busy: bound,
	 * it waits there, and a client it serves falls behind clients of
	 * other shards (a retained PUBLISH not yet stored when another
	 * client, on an idle shard, subscribes). */
	char name[16]; /* what top -H and /proc/PID/task/TID/comm show */
	snprintf(name, sizeof(name), "kite shard %u", s->idx);
	pthread_setname_np(pthread_self(), name);
	cpu_set_t allowed, set;
	CPU_ZERO(&set);
	if (s->cfg->pin_shards &&
	    sched_getaffinity(0, sizeof(allowed), &allowed) == 0 &&
	    CPU_COUNT(&allowed) > 0) {
		unsigned want = s->idx % (unsigned)CPU_COUNT(&allowed), seen = 0;
		for (unsigned cpu = 0; cpu < CPU_SETSIZE; cpu++) {
			if (CPU_ISSET(cpu, &allowed) && seen++ == want) {
				CPU_SET(cpu, &set);
				break;
			}
		}
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	/* liburing 2.3 declares io_uring_enable_rings but does not export
	 * it: make the register call ourselves. */
	if (syscall(__NR_io_uring_register, s->ring.ring_fd,
		    IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0) {
		log_msg(KITE_LOG_ERR, "shard %u: cannot enable io_uring: %s",
			s->idx, strerror(errno));
		abort();
	}
	rcu_register_thread();
	s->now_ms = s->clock_ms();
	/* $SYS is retained before anyone can subscribe, as in Mosquitto. */
	s->last_sys_ms = s->now_ms;
	if (s->idx == 0 && s->cfg->sys_interval_s)
		sys_publish(s);
	/* No shard posts to another before every ring is enabled. */
	rcu_thread_offline();
	pthread_barrier_wait(&s->b->started);
	rcu_thread_online();
	for (unsigned li = 0; li < s->cfg->listener_count; li++)
		shard_arm_accept(s, li);
	shard_arm_tick(s);
	bridge_start(s);
	uint64_t stop_deadline = 0;
	for (;;) {
		/* The log first: the acknowledgements its write releases
		 * leave with this turn's sends. */
		bool unwritten = persist_turn_end(s);
		loop_flush_dirty(s);
		bool backlog = shard_flush_overflow(s) || unwritten ||
			       s->takeover_next_turn;
		if (s->input_paused)
			shard_resume_input(s);
		shard_barrier_post(s);
		shard_send_wakeups(s);
		if (s->stopping) {
			if (!stop_deadline)
				stop_deadline = s->now_ms + 2000;
			if (s->conns_used == 0 || s->now_ms > stop_deadline)
				break;
		}
		rcu_thread_offline();
		shard_wait(s, backlog);
		s->waits++;
		rcu_thread_online();
		bool tick = false;
		/* What other shards posted before this turn's completions
		 * came in goes first: a message another shard routed (and
		 * acknowledged) before a client here published is delivered
		 * before that client's, even when both wait in one gathered
		 * turn. */
		s->now_ms = s->clock_ms();
		shard_drain_rings(s);
		shard_turn(s, &tick);
		shard_drain_rings(s);
		if (s->barrier_asked)
			shard_barrier_answer(s, &tick);
		shard_run_takeovers(s);
		if (s->b->cluster)
			cluster_drain(s);
		if (s->stop_pending && !s->stopping) {
			/* What clients sent before the signal first: an
			 * acknowledgement sent just before SIGTERM counts, as
			 * with Mosquitto. */
			shard_serve_earlier_input(s, &tick);
			if (!shard_acks_awaited(s))
				shard_stop_all(s);
		}
		if (tick) {
			loop_tick(s);
			conn_settle(s);
			shard_arm_tick(s);
		}
		rcu_quiescent_state();
	}
	persist_shard_stop(s);
	bridge_free_all(s);
	rcu_unregister_thread();
	return NULL;
}

/* ---- setup -------------------------------------------------------------- */

static int shard_setup_ring(struct shard *s)
{
	struct io_uring_params p = {0};
	/* SINGLE_ISSUER + DEFER_TASKRUN: only this thread submits, and the
	 * kernel runs completion work when we wait, in our context, instead
	 * of interrupting the loop with task work. SUBMIT_ALL: one bad SQE
	 * must not stall the rest of the batch. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_SUBMIT_ALL;
	/* Set up here so errors stop startup, but enabled by the shard
	 * thread: with SINGLE_ISSUER the enabling task is the issuer. */
	p.flags |= IORING_SETUP_R_DISABLED;
	p.cq_entries = SHARD_RING_ENTRIES * 4;
	p.flags |= IORING_SETUP_CQSIZE;
	int ret = io_uring_queue_init_params(SHARD_RING_ENTRIES, &s->ring, &p);
	if (ret < 0)
		return ret;
	if (!(p.features & IORING_FEAT_NODROP))
		log_msg(KITE_LOG_WARNING, "kernel may drop completions");
	s->min_wait_ok = p.features & IORING_FEAT_MIN_TIMEOUT;
	size_t brsz = SHARD_RECV_BUFS * sizeof(struct io_uring_buf);
	void *mem = NULL;
	/* Our own allocations: not the kernel's ENOMEM the caller explains. */
	if (posix_memalign(&mem, 4096, brsz))
		return -ENOBUFS;
	memset(mem, 0, brsz);
	s->br = mem;
	s->recv_bufs = malloc((size_t)SHARD_RECV_BUFS * SHARD_RECV_BUF_SIZE);
	if (!s->recv_bufs)
		return -ENOBUFS;
	io_uring_buf_ring_init(s->br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)s->br,
		.ring_entries = SHARD_RECV_BUFS,
		.bgid = 0,
		.pad = IOU_PBUF_RING_INC, /* the flags field of newer headers */
	};
	ret = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (ret == -EINVAL) {
		/* Before Linux 6.12: one receive, one whole buffer. */
		reg.pad = 0;
		ret = io_uring_register_buf_ring(&s->ring, &reg, 0);
	}
	if (ret < 0)
		return ret;
	s->recv_bufs_used = 0;
	for (unsigned i = 0; i < SHARD_RECV_BUFS; i++)
		shard_recycle_buf(s, i);
	io_uring_buf_ring_advance(s->br, (int)s->recv_bufs_used);
	return 0;
}

static void xitem_discard(struct xitem it);

int loop_init(struct shard *s, struct broker *b, unsigned idx)
{
	shard_set_item_discard(xitem_discard);
	memset(s, 0, sizeof(*s));
	s->idx = idx;
	s->b = b;
	s->clock_ms = shard_clock_ms;
	s->spare_fd = -1;
	s->accept_ep = -1;
	for (unsigned i = 0; i < KITE_LISTENERS_MAX; i++)
		s->listen_fds[i] = -1;
	int ret = shard_setup_ring(s);
	if (ret == -ENOMEM)
		return LOOP_INIT_NO_RING_MEMORY;
	if (ret < 0) {
		log_msg(KITE_LOG_ERR, "shard %u: io_uring setup failed: %s", idx,
			strerror(-ret));
		return -1;
	}
	s->trie = trie_new();
	s->tls_scratch = malloc(16384);
	s->accept_ep = epoll_create1(EPOLL_CLOEXEC);
	if (!s->trie || !s->tls_scratch || s->accept_ep < 0)
		return -1;
	/* Sparse slots (Linux 5.19) to refuse clients into at the file
	 * limit; their number is bounded by RLIMIT_NOFILE too. */
	s->refuse_slots =
		io_uring_register_files_sparse(&s->ring, SHARD_REFUSE_SLOTS) == 0;
	if (!s->refuse_slots &&
	    (s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	s->cfg = b->cfg;
	s->sec = b->sec;
	return 0;
}

static void xitem_discard(struct xitem it)
{
	switch (it.kind) {
	case XK_DELIVER:
	case XK_Q2_RELEASE:
		msg_unref(it.ptr);
		break;
	case XK_DELIVER_T:
		/* One of its holds; the message reference that rode along. */
		msg_unref(((struct persist_ticket *)it.ptr)->msg);
		if (atomic_fetch_sub(&((struct persist_ticket *)it.ptr)->pending, 1) == 1)
			persist_ticket_discard(it.ptr);
		break;
	case XK_RETAIN_T:
	case XK_TICKET:
		if (it.kind == XK_TICKET ||
		    atomic_fetch_sub(&((struct persist_ticket *)it.ptr)->pending, 1) == 1)
			persist_ticket_discard(it.ptr);
		break;
	case XK_SHARE_JOIN:
	case XK_SHARE_LEAVE:
	case XK_SHARE_DELIVER:
	case XK_SHARE_RETRY:
	case XK_SHARE_ACK:
		share_op_discard(it.ptr);
		break;
	case XK_TAKEOVER:
	case XK_TAKEN:
		free(it.ptr);
		break;
	case XK_ADOPT: {
		struct conn *c = it.ptr;
		close(c->fd);
		conn_free(c);
		break;
	}
	default: /* kicks: their sessions went with their shard; the rest
		    own nothing */
		break;
	}
}

void loop_discard_pending(struct broker *b)
{
	for (unsigned src = 0; src < b->nshards; src++) {
		struct shard *s = &b->shards[src];
		for (unsigned d = 0; d < KITE_SHARDS_MAX; d++) {
			struct xoverflow *o = &s->overflow[d];
			for (uint32_t i = 0; i < o->count; i++)
				xitem_discard(o->items[(o->head + i) % o->cap]);
			free(o->items);
			o->items = NULL;
			o->count = 0;
		}
	}
	for (unsigned src = 0; src <= b->nshards; src++) {
		for (unsigned dst = 0; dst < b->nshards; dst++) {
			struct xring *r = shard_xring(b, src, dst);
			uint32_t head = atomic_load(&r->head);
			uint32_t tail = atomic_load(&r->tail);
			for (; head != tail; head++)
				xitem_discard(r->items[head & (XRING_SLOTS - 1)]);
			atomic_store(&r->head, head);
		}
	}
}

int loop_start(struct shard *s)
{
	return pthread_create(&s->thread, NULL, shard_main, s) ? -1 : 0;
}

void loop_fini(struct shard *s)
{
	for (unsigned li = 0; li < KITE_LISTENERS_MAX; li++)
		if (s->listen_fds[li] >= 0)
			close(s->listen_fds[li]);
	if (s->spare_fd >= 0)
		close(s->spare_fd);
	if (s->accept_ep >= 0)
		close(s->accept_ep);
	for (uint32_t i = 0; i < s->conns_cap; i++) {
		struct conn *c = s->conns[i];
		if (!c)
			continue;
		if (c->session)
			c->session->conn = NULL;
		conn_free(c);
	}
	while (s->sessions)
		session_destroy(s->sessions);
	while (s->wills_due) { /* closed in the last turn: not published */
		struct will *w = s->wills_due;
		s->wills_due = w->next;
		msg_unref(w->msg);
		free(w);
	}
	share_free_all(s);
	htab_fini(&s->by_id, NULL);
	if (s->trie)
		trie_free(s->trie);
	if (s->ring.ring_fd > 0)
		io_uring_queue_exit(&s->ring);
	metrics_fini(s);
	free(s->br);
	free(s->recv_bufs);
	free(s->conns);
	free(s->free_ids);
	free(s->scratch);
	free(s->tls_scratch);
	free(s->q2_waiters);
	free(s->barrier_waiters);
	conn_pools_free(s);
	tls_buf_free(&s->tls_plain);
}
