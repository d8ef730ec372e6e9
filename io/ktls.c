/* Kernel TLS: the handshake ran in userspace (OpenSSL); record encryption
 * moves into the kernel for both directions, then the connection is a
 * plain socket to io_uring again and the SSL object is freed.
 *
 * A small state machine per connection (h2o's switch_to_ktls):
 * UNDECIDED -> STOPPING (recv cancelled, last output flushed) -> ON, or
 * OFF for good when the kernel or the cipher cannot take it. Keys are
 * wiped on every path. */
#include <errno.h>
#include <linux/tls.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/log.h"
#include "io/engine.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_128) == 40,
	       "kernel ABI: aes_gcm_128 crypto info");
_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_256) == 56,
	       "kernel ABI: aes_gcm_256 crypto info");

/* After a finished handshake on an active connection: start the move. */
void conn_ktls_begin(struct conn *c)
{
	if (!c->shard->b->ktls || !c->tls || c->ktls != KTLS_UNDECIDED ||
	    c->state != CONN_ACTIVE || !tls_conn_handshake_done(c->tls))
		return;
	c->ktls = KTLS_STOPPING;
	if (!(c->flags & CONN_RECV_ARMED)) {
		conn_ktls_try(c);
		return;
	}
	struct io_uring_sqe *sqe = shard_sqe(c->shard);
	io_uring_prep_cancel64(sqe, ud_pack(UD_RECV, c->id, c->gen), 0);
	io_uring_sqe_set_data64(sqe, ud_pack(UD_CANCEL, c->id, c->gen));
}

/* RX first: if the kernel refuses it nothing has changed yet. Once TX is
 * in, OpenSSL can no longer write, so a TX failure ends the connection. */
static int ktls_install(struct conn *c, const struct tls_ktls_keys *k,
			const char **why)
{
	if (setsockopt(c->fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) < 0) {
		*why = "TCP_ULP tls";
		return -1;
	}
	if (setsockopt(c->fd, SOL_TLS, TLS_RX, &k->rx, (socklen_t)k->rx_len) < 0) {
		*why = "TLS_RX";
		return -1;
	}
	if (setsockopt(c->fd, SOL_TLS, TLS_TX, &k->tx, (socklen_t)k->tx_len) < 0) {
		*why = "TLS_TX";
		return -2;
	}
	return 0;
}

static void ktls_log(struct conn *c, const char *what, const char *detail)
{
	if (!log_enabled(KITE_LOG_DEBUG))
		return;
	char peer[64];
	log_msg(KITE_LOG_DEBUG, "kernel TLS %s for %s (%s %s)%s%s", what,
		conn_peer_str(c, peer, sizeof(peer)), tls_conn_version(c->tls),
		tls_conn_cipher(c->tls), detail ? ": " : "", detail ? detail : "");
}

static void ktls_stay_userspace(struct conn *c, enum conn_ktls next)
{
	c->ktls = (uint8_t)next;
	if (c->state == CONN_ACTIVE && !(c->flags & CONN_RECV_ARMED))
		shard_arm_recv(c->shard, c);
}

/* Recv stopped: when OpenSSL has nothing left to send, hand the keys to
 * the kernel. Called again from the send completion while it waits. */
void conn_ktls_try(struct conn *c)
{
	const uint8_t *p;
	if (c->ktls != KTLS_STOPPING || (c->flags & CONN_RECV_ARMED))
		return;
	if (c->state != CONN_ACTIVE) {
		c->ktls = KTLS_OFF;
		return;
	}
	if ((c->flags & CONN_SEND_BUSY) || c->out_count ||
	    tls_conn_pending_out(c->tls, &p))
		return; /* the send completion calls back */
	struct tls_ktls_keys k;
	int rc = tls_conn_export_ktls(c->tls, &k);
	if (rc == TLS_KTLS_AGAIN) {
		/* A record is half read: stay in userspace, try later. */
		tls_ktls_keys_wipe(&k);
		ktls_stay_userspace(c, ++c->ktls_tries < 8 ? KTLS_UNDECIDED : KTLS_OFF);
		return;
	}
	if (rc != TLS_KTLS_OK) {
		tls_ktls_keys_wipe(&k);
		ktls_log(c, "not used", "cipher or state not supported");
		ktls_stay_userspace(c, KTLS_OFF);
		return;
	}
	const char *why = NULL;
	int ret = ktls_install(c, &k, &why);
	int err = errno;
	tls_ktls_keys_wipe(&k);
	if (ret == -1) {
		ktls_log(c, "not used", why);
		ktls_stay_userspace(c, KTLS_OFF);
		return;
	}
	if (ret == -2) {
		char detail[96];
		snprintf(detail, sizeof(detail), "%s: %s", why, strerror(err));
		conn_close(c, detail, true);
		return;
	}
	ktls_log(c, "on", NULL);
	atomic_fetch_add_explicit(&c->shard->stats.ktls_connections, 1,
				  memory_order_relaxed);
	/* An idle connection now costs no more than a plain one. */
	tls_conn_free(c->tls);
	c->tls = NULL;
	c->ktls = KTLS_ON;
	shard_arm_recv(c->shard, c);
}

/* With TLS_RX on, a record that is not application data makes recv fail
 * with EIO; read it with its type (TLS_GET_RECORD_TYPE) and act on it. */
void conn_ktls_control_record(struct conn *c)
{
	uint8_t data[256];
	char cbuf[CMSG_SPACE(sizeof(unsigned char))];
	struct iovec iov = {data, sizeof(data)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT);
	struct cmsghdr *cm = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL;
	unsigned type = cm && cm->cmsg_level == SOL_TLS &&
				cm->cmsg_type == TLS_GET_RECORD_TYPE
			? *(unsigned char *)CMSG_DATA(cm)
			: 0;
	if (type == 21 && n >= 2 && data[1] == 0) { /* alert close_notify */
		conn_close(c, "closed by client (TLS close_notify)", true);
		return;
	}
	char why[96];
	if (type == 21 && n >= 2)
		snprintf(why, sizeof(why), "TLS alert %u from client", data[1]);
	else if (type == 22)
		snprintf(why, sizeof(why), "TLS handshake message after the "
					   "switch to kernel TLS (KeyUpdate?)");
	else
		snprintf(why, sizeof(why), "kernel TLS receive error");
	conn_close(c, why, true);
}
