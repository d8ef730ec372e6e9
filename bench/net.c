/* Connections and socket I/O for kite-bench: one level-triggered epoll set,
 * non-blocking sockets, a shared receive scratch buffer and per-connection
 * send buffers flushed once per loop turn (so a turn's acks and publishes
 * for one connection leave in one send). */
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#include "bench/bench.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ---- plain TCP transport ------------------------------------------------ */

static int plain_start(struct kb_conn *c)
{
	(void)c;
	return 1;
}

static ssize_t plain_recv(struct kb_conn *c, uint8_t *buf, size_t len)
{
	return recv(c->fd, buf, len, MSG_DONTWAIT);
}

static void plain_close(struct kb_conn *c)
{
	(void)c;
}

const struct kb_transport kb_transport_plain = {
	.name = "tcp",
	.start = plain_start,
	.recv = plain_recv,
	.close = plain_close,
};

/* ---- setup ------------------------------------------------------------- */

int kb_net_init(struct kb *kb)
{
	kb->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (kb->epfd < 0)
		return -1;
	if (kb->o.uring && !kb->tp) {
		/* SINGLE_ISSUER: only this thread submits. COOP_TASKRUN: no
		 * interrupt to run task work, none is expected (the sends
		 * complete inline). */
		int rc = io_uring_queue_init(KB_URING_ENTRIES, &kb->ring,
					     IORING_SETUP_SINGLE_ISSUER |
						     IORING_SETUP_COOP_TASKRUN);
		if (rc != 0) {
			kb_error(kb, "io_uring_queue_init: %s: sending with "
				     "send(2)", strerror(-rc));
		} else {
			kb->uring = true;
		}
	}
	kb->scratch = malloc(KB_RECV_SCRATCH);
	kb->flush = calloc(kb->nconns ? kb->nconns : 1, sizeof(*kb->flush));
	if (!kb->scratch || !kb->flush)
		return -1;
	return 0;
}

static int epoll_set(struct kb *kb, uint32_t idx, int op, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.u32 = idx};
	return epoll_ctl(kb->epfd, op, kb->conns[idx].fd, &ev);
}

/* Starts a non-blocking connect from 127.0.0.1 (any port) to the broker.
 * IP_BIND_ADDRESS_NO_PORT lets the kernel pick the source port at connect
 * time by the whole 4-tuple, so several broker ports multiply the ~28k
 * ephemeral ports one source address has. */
int kb_conn_open(struct kb *kb, uint32_t idx)
{
	struct kb_conn *c = &kb->conns[idx];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		kb_error(kb, "socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	struct sockaddr_in src = {.sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
		kb_error(kb, "bind 127.0.0.1: %s", strerror(errno));
		close(fd);
		return -1;
	}
	struct sockaddr_in dst = {.sin_family = AF_INET,
				  .sin_port = htons(c->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	c->fd = fd;
	c->state = KB_ST_TCP;
	c->tp = kb->tp ? kb->tp : &kb_transport_plain;
	c->tp_state = NULL;
	c->connect_tries++;
	int rc = connect(fd, (struct sockaddr *)&dst, sizeof(dst));
	if (rc != 0 && errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		c->fd = -1;
		c->state = KB_ST_QUEUED;
		errno = e;
		return -1;
	}
	if (epoll_set(kb, idx, EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT) != 0) {
		kb_error(kb, "epoll_ctl add: %s", strerror(errno));
		close(fd);
		c->fd = -1;
		return -1;
	}
	c->out_armed = true;
	return 0;
}

void kb_conn_close(struct kb *kb, uint32_t idx, bool graceful)
{
	struct kb_conn *c = &kb->conns[idx];
	if (c->fd < 0) {
		c->state = KB_ST_CLOSED;
		return;
	}
	if (graceful && kb_conn_pending(c) &&
	    (!c->tp->seal || c->tp->seal(c) == 0))
		(void)kb_conn_push(c);
	c->tp->close(c);
	if (!graceful) {
		/* Reset instead of FIN: no TIME_WAIT left behind. */
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	epoll_ctl(kb->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->state = KB_ST_CLOSED;
	free(c->rbuf);
	c->rbuf = NULL;
	c->rlen = 0;
	free(c->wbuf);
	c->wbuf = NULL;
	c->wlen = c->woff = c->wcap = c->wseal = 0;
	kb_ws_free(c);
}

/* ---- send side ---------------------------------------------------------- */

uint8_t *kb_wbuf_reserve_raw(struct kb *kb, struct kb_conn *c, size_t n)
{
	(void)kb;
	if (c->woff == c->wlen)
		c->woff = c->wlen = c->wseal = 0;
	if ((size_t)c->wlen + n <= c->wcap)
		return c->wbuf + c->wlen;
	if (c->woff > 0) {
		/* Slide unsent bytes to the front before growing. */
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		c->wlen -= c->woff;
		c->wseal -= c->woff < c->wseal ? c->woff : c->wseal;
		c->woff = 0;
		if ((size_t)c->wlen + n <= c->wcap)
			return c->wbuf + c->wlen;
	}
	size_t cap = c->wcap ? c->wcap : 1024;
	while (cap < (size_t)c->wlen + n)
		cap *= 2;
	if (cap > KB_WBUF_HARD + KB_PACKET_MAX)
		return NULL;
	uint8_t *nb = realloc(c->wbuf, cap);
	if (!nb)
		return NULL;
	c->wbuf = nb;
	c->wcap = (uint32_t)cap;
	return c->wbuf + c->wlen;
}

void kb_wbuf_commit_raw(struct kb *kb, struct kb_conn *c, size_t n)
{
	assert((size_t)c->wlen + n <= c->wcap);
	c->wlen += (uint32_t)n;
	if (!c->dirty) {
		c->dirty = true;
		kb->flush[kb->nflush++] = (uint32_t)(c - kb->conns);
	}
}

/* Over WebSockets the payload goes after room for the largest header n
 * can need, so the common case frames without moving bytes. */
uint8_t *kb_wbuf_reserve(struct kb *kb, struct kb_conn *c, size_t n)
{
	if (!kb_ws_framing(c))
		return kb_wbuf_reserve_raw(kb, c, n);
	size_t room = kb_ws_header_room(n);
	uint8_t *b = kb_wbuf_reserve_raw(kb, c, room + n);
	c->ws_room = (uint8_t)room;
	return b ? b + room : NULL;
}

void kb_wbuf_commit(struct kb *kb, struct kb_conn *c, size_t n)
{
	if (!kb_ws_framing(c)) {
		kb_wbuf_commit_raw(kb, c, n);
		return;
	}
	kb_wbuf_commit_raw(kb, c,
			   kb_ws_frame(c->wbuf + c->wlen, c->ws_room, 0x2, n));
}

/* After a send attempt: fails a connection the broker stopped reading,
 * wakes a publisher whose socket drained, arms EPOLLOUT while bytes are
 * left. Returns -1 when the connection must go. */
static int conn_sent(struct kb *kb, uint32_t idx)
{
	struct kb_conn *c = &kb->conns[idx];
	if (kb_conn_pending(c) > KB_WBUF_HARD) {
		kb_error(kb, "connection %u: %u bytes unsent, broker not reading",
			 idx, kb_conn_pending(c));
		return -1;
	}
	if (c->role == KB_ROLE_PUB && kb_conn_pending(c) < KB_WBUF_SOFT)
		kb_pub_wake(kb, c->role_idx);
	bool want_out = kb_conn_pending(c) > 0;
	if (want_out != c->out_armed) {
		epoll_set(kb, idx, EPOLL_CTL_MOD,
			  EPOLLIN | (want_out ? EPOLLOUT : 0));
		c->out_armed = want_out;
	}
	if (!want_out)
		c->woff = c->wlen = c->wseal = 0;
	return 0;
}

int kb_conn_push(struct kb_conn *c)
{
	int calls = 0;
	while (kb_conn_pending(c)) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, kb_conn_pending(c),
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		calls++;
		if (n > 0) {
			c->woff += (uint32_t)n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n < 0 && errno == EINTR)
			continue;
		return -1;
	}
	return calls;
}

/* Sends what is buffered; arms EPOLLOUT while the socket is full. Returns
 * -1 when the connection died. */
static int conn_flush(struct kb *kb, uint32_t idx)
{
	struct kb_conn *c = &kb->conns[idx];
	if (c->tp->seal && c->tp->seal(c) != 0)
		return -1;
	int calls = kb_conn_push(c);
	if (calls < 0)
		return -1;
	kb->io_sends += (uint64_t)calls;
	return conn_sent(kb, idx);
}

static void conn_lost(struct kb *kb, uint32_t idx)
{
	if (kb->conns[idx].state == KB_ST_DISCONNECTING) {
		/* Storm: the broker closed after our DISCONNECT, as it
		 * should. */
		kb_storm_cycle_done(kb, idx, kb_now_ns());
		return;
	}
	kb_client_closed(kb, idx);
	kb_conn_close(kb, idx, false);
}

static void reap_sends(struct kb *kb)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	io_uring_for_each_cqe(&kb->ring, head, cqe)
	{
		uint32_t idx = (uint32_t)cqe->user_data;
		struct kb_conn *c = &kb->conns[idx];
		int res = cqe->res;
		n++;
		if (c->fd < 0)
			continue;
		if (res > 0)
			c->woff += (uint32_t)res;
		bool dead = res == 0 || (res < 0 && res != -EAGAIN &&
					 res != -EINTR);
		if (dead || conn_sent(kb, idx) != 0)
			conn_lost(kb, idx);
	}
	io_uring_cq_advance(&kb->ring, n);
}

/* One IORING_OP_SEND per connection with bytes to send (TLS: records
 * sealed here first, see kb_transport.seal), all submitted with one
 * io_uring_enter. The sockets are non-blocking and the
 * sends carry MSG_DONTWAIT, so each completes during the submit (a full
 * socket answers -EAGAIN instead of arming a poll) and the turn sees every
 * result before it ends, as with send(2). A short send means the socket
 * is full: EPOLLOUT picks the rest up. */
static void flush_uring(struct kb *kb)
{
	struct io_uring *ring = &kb->ring;
	uint32_t queued = 0;
	for (uint32_t i = 0; i <= kb->nflush; i++) {
		bool last = i == kb->nflush;
		struct io_uring_sqe *sqe = NULL;
		uint32_t idx = last ? 0 : kb->flush[i];
		struct kb_conn *c = &kb->conns[idx];
		if (!last) {
			c->dirty = false;
			if (c->fd < 0 || c->state == KB_ST_TCP)
				continue;
			if (c->tp->seal && c->tp->seal(c) != 0) {
				conn_lost(kb, idx);
				continue;
			}
			if (!kb_conn_pending(c)) {
				if (conn_sent(kb, idx) != 0)
					conn_lost(kb, idx);
				continue;
			}
			sqe = io_uring_get_sqe(ring);
		}
		if (queued && (last || !sqe)) {
			/* Waiting for the whole batch costs nothing when every
			 * send completed inline, and guarantees that no send
			 * still reads a buffer the next turn may move. */
			io_uring_submit_and_wait(ring, queued);
			reap_sends(kb);
			queued = 0;
			if (!last)
				sqe = io_uring_get_sqe(ring);
		}
		if (last)
			break;
		assert(sqe);
		io_uring_prep_send(sqe, c->fd, c->wbuf + c->woff,
				   kb_conn_pending(c), MSG_DONTWAIT | MSG_NOSIGNAL);
		sqe->user_data = idx;
		queued++;
		kb->io_sends++;
	}
}

void kb_flush_all(struct kb *kb)
{
	/* The list can grow while flushing only through kb_client_closed,
	 * which never queues output, so one pass is enough. */
	if (kb->uring) {
		flush_uring(kb);
		kb->nflush = 0;
		return;
	}
	for (uint32_t i = 0; i < kb->nflush; i++) {
		uint32_t idx = kb->flush[i];
		struct kb_conn *c = &kb->conns[idx];
		c->dirty = false;
		if (c->fd < 0 || c->state == KB_ST_TCP)
			continue;
		if (conn_flush(kb, idx) != 0)
			conn_lost(kb, idx);
	}
	kb->nflush = 0;
}

/* ---- receive side ------------------------------------------------------- */

/* One recv into the scratch buffer (after any leftover partial packet),
 * then every whole packet is handled in place. Over WebSockets the received
 * bytes (after a kept partial frame header) are unframed in place first. */
static int conn_read(struct kb *kb, uint32_t idx, uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	uint8_t *buf = kb->scratch;
	size_t have = c->rlen;
	if (have) {
		memcpy(buf, c->rbuf, have);
		free(c->rbuf);
		c->rbuf = NULL;
		c->rlen = 0;
	}
	bool framed = kb_ws_framing(c);
	size_t pend = framed ? kb_ws_take_pending(c, buf + have) : 0;
	ssize_t n = c->tp->recv(c, buf + have + pend,
				KB_RECV_SCRATCH - have - pend);
	kb->io_recvs++;
	if (n == 0)
		return -1;
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
			n = 0;
		} else {
			return -1;
		}
	}
	if (c->state == KB_ST_WS_UPGRADE) {
		size_t len = have + (size_t)n, used = 0;
		int rc = kb_ws_upgrade_input(kb, c, buf, len, &used);
		if (rc < 0) {
			kb->c.conn_failures++;
			return -1;
		}
		if (rc == 0) {
			c->rbuf = malloc(len);
			if (!c->rbuf)
				return -1;
			memcpy(c->rbuf, buf, len);
			c->rlen = (uint32_t)len;
			return 0;
		}
		if (used != len) {
			/* The server speaks MQTT only after our CONNECT. */
			kb_error(kb, "connection %u: %zu bytes after the 101",
				 idx, len - used);
			return -1;
		}
		kb_client_established(kb, idx, now);
		return 0;
	}
	if (framed) {
		ssize_t m = kb_ws_unframe(kb, c, buf + have, pend + (size_t)n);
		if (m < 0)
			return -1;
		n = m;
	}
	size_t len = have + (size_t)n;
	ssize_t used = kb_client_input(kb, idx, buf, len, now);
	if (used < 0)
		return -1;
	if (c->state == KB_ST_CLOSED || c->fd < 0)
		return 0;
	size_t rest = len - (size_t)used;
	if (rest) {
		if (rest > KB_PACKET_MAX) {
			kb_error(kb, "connection %u: packet larger than %u bytes",
				 idx, KB_PACKET_MAX);
			return -1;
		}
		c->rbuf = malloc(rest);
		if (!c->rbuf)
			return -1;
		memcpy(c->rbuf, buf + used, rest);
		c->rlen = (uint32_t)rest;
	}
	return 0;
}

static void conn_established(struct kb *kb, uint32_t idx, uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	int rc = c->tp->start(c);
	if (rc < 0) {
		kb->c.conn_failures++;
		if (kb->c.conn_failures <= 3)
			kb_error(kb, "connection %u: %s", idx,
				 c->tp == &kb_transport_tls ? kb_tls_last_error()
							    : "transport failed");
		conn_lost(kb, idx);
		return;
	}
	if (rc == 0) {
		c->state = KB_ST_HANDSHAKE;
		epoll_set(kb, idx, EPOLL_CTL_MOD, c->tp_wants);
		c->out_armed = (c->tp_wants & EPOLLOUT) != 0;
		return;
	}
	epoll_set(kb, idx, EPOLL_CTL_MOD, EPOLLIN);
	c->out_armed = false;
	if (kb->o.ws) {
		/* The upgrade request leaves with this turn's flush. */
		if (kb_ws_start(kb, c) != 0) {
			kb->c.conn_failures++;
			conn_lost(kb, idx);
			return;
		}
		c->state = KB_ST_WS_UPGRADE;
		return;
	}
	kb_client_established(kb, idx, now);
}

static void conn_connect_done(struct kb *kb, uint32_t idx, uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	int err = 0;
	socklen_t elen = sizeof(err);
	getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
	if (err == EINPROGRESS || err == EALREADY)
		return;
	if (err == 0) {
		conn_established(kb, idx, now);
		return;
	}
	/* Refused or reset during connect: a full accept queue does this.
	 * Retry a few times, then count a failure. */
	epoll_ctl(kb->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->state = KB_ST_QUEUED;
	if (c->connect_tries < KB_CONNECT_TRIES_MAX &&
	    kb_conn_open(kb, idx) == 0)
		return;
	kb->c.conn_failures++;
	kb_error(kb, "connect to 127.0.0.1:%u failed: %s", c->port,
		 strerror(err));
	kb_client_closed(kb, idx);
	c->state = KB_ST_CLOSED;
}

void kb_handle_event(struct kb *kb, uint32_t idx, uint32_t events,
		     uint64_t now)
{
	struct kb_conn *c = &kb->conns[idx];
	if (c->fd < 0)
		return;
	if (c->state == KB_ST_TCP) {
		conn_connect_done(kb, idx, now);
		return;
	}
	if (c->state == KB_ST_HANDSHAKE) {
		conn_established(kb, idx, now);
		return;
	}
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
		do {
			if (conn_read(kb, idx, now) != 0) {
				conn_lost(kb, idx);
				return;
			}
		} while (c->tp_more && c->fd >= 0 && c->state != KB_ST_CLOSED);
		if (c->tp_flush && c->fd >= 0) {
			/* Records the reads made (an alert, a KeyUpdate's
			 * answer) leave with this turn's sends. */
			c->tp_flush = false;
			kb_wbuf_commit_raw(kb, c, 0);
		}
	}
	if ((events & EPOLLOUT) && c->fd >= 0 && !c->dirty) {
		if (conn_flush(kb, idx) != 0)
			conn_lost(kb, idx);
	}
}
