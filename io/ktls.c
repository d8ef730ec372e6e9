/* Kernel TLS: the handshake ran in userspace (OpenSSL); record encryption
 * moves into the kernel for both directions, then the connection is a
 * plain socket to io_uring again and the SSL object is freed.
 *
 * A small state machine per connection (h2o's switch_to_ktls):
 * UNDECIDED -> STOPPING (recv cancelled, last output flushed) -> ON, or
 * OFF for good when the kernel or the cipher cannot take it. Keys are
 * wiped on every path.
 *
 * Once ON, records that are not application data come up through
 * ktls_control_record: close_notify is answered in kind, a TLS 1.3
 * KeyUpdate moves the RX key on (and ours too when asked), a TLS 1.2
 * renegotiation gets a no_renegotiation warning as OpenSSL would give
 * it. Key updates need Linux 6.14 or later; on older kernels a KeyUpdate
 * ends the connection with that reason (the TLS secrets are then not
 * kept at all).
 *
 * A bridge's connection (kite the TLS client) moves the same way once the
 * remote's CONNACK is in; the remote may also send session tickets
 * (dropped) or a TLS 1.2 HelloRequest (refused like a ClientHello). */
#include <assert.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "core/log.h"
#include "io/conn.h"
#include "io/ktls.h"
#include "io/shard.h"

_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_128) == 40,
	       "kernel ABI: aes_gcm_128 crypto info");
_Static_assert(sizeof(struct tls12_crypto_info_aes_gcm_256) == 56,
	       "kernel ABI: aes_gcm_256 crypto info");

/* After a finished handshake on an active connection: start the move. */
void ktls_begin(struct conn *c)
{
	if (!c->shard->b->ktls || !c->tls ||
	    c->ktls != KTLS_UNDECIDED ||
	    c->state != CONN_ACTIVE || !tls_conn_handshake_done(c->tls))
		return;
	c->ktls = KTLS_STOPPING;
	if (!(c->flags & CONN_RECV_ARMED)) {
		ktls_try(c);
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
	/* After the handoff OpenSSL's object (and its names) are gone. */
	log_msg(KITE_LOG_DEBUG, "kernel TLS %s for %s (%s %s)%s%s", what,
		conn_peer_str(c, peer, sizeof(peer)),
		c->tls ? tls_conn_version(c->tls)
		       : c->tls_flags & CONN_TLS13 ? "TLSv1.3" : "TLSv1.2",
		c->tls ? tls_conn_cipher(c->tls) : "in the kernel",
		detail ? ": " : "", detail ? detail : "");
}

/* Userspace TLS goes on: MQTT bytes held for the kernel (the CONNACK)
 * are encrypted by OpenSSL after all, and the socket is read again. */
static void ktls_stay_userspace(struct conn *c, enum conn_ktls next)
{
	c->ktls = (uint8_t)next;
	if (c->out_count)
		conn_mark_dirty(c);
	if (c->state == CONN_ACTIVE && !(c->flags & CONN_RECV_ARMED))
		shard_arm_recv(c->shard, c);
}

/* Recv stopped: when OpenSSL has nothing left to send, hand the keys to
 * the kernel. Called again from the send completion while it waits.
 * MQTT bytes queued meanwhile (the CONNACK) wait in the wire queue and go
 * out through the kernel: a client that publishes and closes as soon as
 * it has its CONNACK then finds its socket already moved. */
void ktls_try(struct conn *c)
{
	const uint8_t *p;
	if (c->ktls != KTLS_STOPPING || (c->flags & CONN_RECV_ARMED))
		return;
	if (c->state != CONN_ACTIVE) {
		c->ktls = KTLS_OFF;
		return;
	}
	if ((c->flags & CONN_SEND_BUSY) || tls_conn_pending_out(c->tls, &p))
		return; /* the send completion calls back */
	struct tls_ktls_keys k;
	int rc = tls_conn_export_ktls(c->tls, &k,
				      c->shard->b->ktls_rekey ? TLS_KTLS_KEEP_SECRETS : 0);
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
	bool tls13 = k.version == TLS_1_3_VERSION;
	tls_ktls_keys_wipe(&k);
	if (ret == -1) {
		/* Typically a client that closed right after its CONNECT:
		 * TCP_ULP wants an ESTABLISHED socket. OpenSSL still has
		 * every key and record number: read the rest in userspace. */
		char detail[96];
		snprintf(detail, sizeof(detail), "%s: %s", why, strerror(err));
		tls_ktls_rekey_free(k.rekey);
		tls_conn_ktls_declined(c->tls);
		ktls_log(c, "not used", detail);
		ktls_stay_userspace(c, KTLS_OFF);
		return;
	}
	if (ret == -2) {
		/* The kernel decrypts but will not encrypt: nothing can be
		 * said to the client any more (OpenSSL's keys are spent). */
		tls_ktls_rekey_free(k.rekey);
		char detail[96];
		snprintf(detail, sizeof(detail), "kernel TLS: %s: %s", why,
			 strerror(err));
		c->ktls = KTLS_OFF;
		conn_close(c, detail, true);
		return;
	}
	ktls_log(c, "on", NULL);
	/* Out of memory here, the connection ends at the client's first
	 * KeyUpdate, as on a kernel that cannot re-key. */
	struct conn_rare *rare = k.rekey ? conn_rare(c) : NULL;
	if (rare)
		rare->ktls_rekey = k.rekey;
	else
		tls_ktls_rekey_free(k.rekey);
	if (tls13)
		c->tls_flags |= CONN_TLS13;
	stat_add(&c->shard->stats.ktls_connections, 1);
	stat_sub(&c->shard->stats.tls_open_user, 1);
	stat_add(&c->shard->stats.tls_open_kernel, 1);
	/* An idle connection now costs no more than a plain one. */
	tls_conn_free(c->tls);
	c->tls = NULL;
	c->ktls = KTLS_ON;
	if (c->out_count)
		conn_mark_dirty(c);
	shard_arm_recv(c->shard, c);
}

/* Who is at the other end, for the reasons a connection ends with: a
 * listener's client, or the remote broker of a bridge (our client side). */
static const char *ktls_peer(const struct conn *c)
{
	return c->bridge ? "the remote" : "client";
}

static void ktls_rearm(struct conn *c)
{
	if (c->state == CONN_ACTIVE && !(c->flags & CONN_RECV_ARMED))
		shard_arm_recv(c->shard, c);
}

static void ktls_owe(struct conn *c, uint8_t what)
{
	c->tls_flags |= what;
	conn_mark_dirty(c);
}

/* Ordinary clients update after gigabytes (or never); GnuTLS allows 8
 * per second too. */
_Static_assert(RATECAP_EVENTS == 8, "the log line says 8 KeyUpdates");

/* Moves one direction to its next TLS 1.3 key, in the kernel too.
 * 0, or an errno for the log (the key material is wiped either way). */
static int ktls_next_key(struct conn *c, enum tls_ktls_dir dir)
{
	union tls_ktls_crypto_info ci;
	size_t len;
	int err = EOPNOTSUPP;
	if (c->rare && c->rare->ktls_rekey &&
	    tls_ktls_rekey_next(c->rare->ktls_rekey, dir, &ci, &len) == 0)
		err = setsockopt(c->fd, SOL_TLS, dir == TLS_KTLS_TX ? TLS_TX : TLS_RX,
				 &ci, (socklen_t)len) == 0 ? 0 : errno;
	explicit_bzero(&ci, sizeof(ci));
	return err;
}

/* The peer's TLS 1.3 KeyUpdate: everything it sends from now on is
 * under its next key, and the kernel holds further records until it has
 * that key (Linux 6.14+). */
static void ktls_peer_key_update(struct conn *c, bool update_requested)
{
	struct conn_rare *rare = c->rare;
	if (!rare || !rare->ktls_rekey) {
		char why[112];
		snprintf(why, sizeof(why), "TLS KeyUpdate from %s: this kernel "
			 "cannot replace kernel TLS keys (Linux 6.14 or later "
			 "can)", ktls_peer(c));
		conn_close(c, why, true);
		return;
	}
	if (!ratecap_admit(&rare->key_updates, c->shard->now_ms, 1000)) {
		char why[96];
		snprintf(why, sizeof(why), "too many TLS KeyUpdates from %s "
			 "(more than 8 in a second)", ktls_peer(c));
		conn_close(c, why, true);
		return;
	}
	int err = ktls_next_key(c, TLS_KTLS_RX);
	if (err) {
		char why[96];
		snprintf(why, sizeof(why), "TLS KeyUpdate from %s: cannot "
			 "install its new key: %s", ktls_peer(c), strerror(err));
		conn_close(c, why, true);
		return;
	}
	ktls_log(c, "key update", update_requested ? "peer's, ours requested"
						   : "peer's");
	/* RFC 8446 4.6.3: ours goes before our next application data. */
	if (update_requested)
		ktls_owe(c, CONN_TLS_OWE_KEY_UPDATE);
	ktls_rearm(c);
}

/* The record holds only whole NewSessionTicket messages (RFC 8446
 * 4.6.1); one split across records is not expected of any server. */
static bool ktls_all_tickets(const uint8_t *m, size_t n)
{
	if (!n)
		return false;
	while (n) {
		if (n < 4 || m[0] != 4)
			return false;
		size_t len = 4 + ((size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3]);
		if (len > n)
			return false;
		m += len;
		n -= len;
	}
	return true;
}

static void ktls_handshake_message(struct conn *c, const uint8_t *m, size_t n)
{
	unsigned type = n ? m[0] : 256;
	size_t body = n >= 4 ? (size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3] : 0;
	bool tls13 = c->tls_flags & CONN_TLS13;

	/* A KeyUpdate is the record's only message (the key changes right
	 * after it: RFC 8446 5.1). */
	if (tls13 && type == 24 && n == 5 && body == 1 && m[4] <= 1) {
		ktls_peer_key_update(c, m[4] == 1);
		return;
	}
	/* A remote may give a bridge session tickets at any time; they
	 * change no key, and a bridge does not resume (SSL_OP_NO_TICKET). */
	if (c->bridge && tls13 && ktls_all_tickets(m, n)) {
		ktls_rearm(c);
		return;
	}
	if (!tls13 && type == (c->bridge ? 0u : 1u) && n >= 4 && body == n - 4) {
		/* ClientHello (or a server's HelloRequest to a bridge): a
		 * renegotiation, which kernel TLS cannot do (and OpenSSL is
		 * told to refuse: SSL_OP_NO_RENEGOTIATION). The warning lets
		 * the peer carry on or give up. */
		if (c->bridge)
			ktls_log(c, "renegotiation refused", "no_renegotiation alert");
		else if (log_enabled(KITE_LOG_INFO)) {
			char peer[64];
			log_msg(KITE_LOG_INFO, "Client %s %s: TLS renegotiation "
				"refused (no_renegotiation alert)",
				conn_client_id(c), conn_peer_str(c, peer, sizeof(peer)));
		}
		ktls_owe(c, CONN_TLS_OWE_NO_RENEGOTIATION);
		ktls_rearm(c);
		return;
	}
	char why[96];
	snprintf(why, sizeof(why), "unexpected TLS handshake message %u "
				   "after the handshake", type);
	conn_close(c, why, true);
}

/* With TLS_RX on, a record that is not application data makes recv fail
 * with EIO; read it (a whole record, up to 16 KiB) with its type
 * (TLS_GET_RECORD_TYPE) and act on it. */
void ktls_control_record(struct conn *c)
{
	uint8_t *data = c->shard->tls_scratch;
	char cbuf[CMSG_SPACE(sizeof(unsigned char))];
	struct iovec iov = {data, 16384};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT);
	struct cmsghdr *cm = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL;
	unsigned type = cm && cm->cmsg_level == SOL_TLS &&
				cm->cmsg_type == TLS_GET_RECORD_TYPE
			? *(unsigned char *)CMSG_DATA(cm)
			: 0;
	char why[96];
	if (n < 0 && errno == EAGAIN) {
		ktls_rearm(c); /* nothing there after all */
		return;
	}
	if (n < 0) {
		snprintf(why, sizeof(why), "kernel TLS receive error: %s",
			 strerror(errno));
		conn_close(c, why, true);
		return;
	}
	if (type == 22) {
		ktls_handshake_message(c, data, (size_t)n);
		return;
	}
	if (type == 21 && n == 2 && data[1] == 0) { /* close_notify */
		c->flags |= CONN_CLOSE_AFTER_FLUSH; /* answered in kind */
		snprintf(why, sizeof(why), "closed by %s (TLS close_notify)",
			 ktls_peer(c));
		conn_close(c, why, true);
		return;
	}
	/* A warning other than close_notify (TLS 1.2; in TLS 1.3 only
	 * user_canceled, 90, is one) changes nothing. */
	if (type == 21 && n == 2 && data[0] == 1 &&
	    (!(c->tls_flags & CONN_TLS13) || data[1] == 90)) {
		ktls_log(c, "warning alert ignored", NULL);
		ktls_rearm(c);
		return;
	}
	if (type == 21 && n == 2)
		snprintf(why, sizeof(why), "TLS alert %u from %s", data[1],
			 ktls_peer(c));
	else if (type == 21)
		snprintf(why, sizeof(why), "malformed TLS alert from %s",
			 ktls_peer(c));
	else
		snprintf(why, sizeof(why), "TLS record of type %u from %s "
			 "after the handshake", type, ktls_peer(c));
	conn_close(c, why, true);
}

bool ktls_send_control(struct conn *c)
{
	static const uint8_t no_renegotiation[2] = {1, 100};
	static const uint8_t key_update[5] = {24, 0, 0, 1, 0}; /* not requested */
	static const uint8_t close_notify[2] = {1, 0};

	assert(c->ktls == KTLS_ON && !(c->flags & CONN_SEND_BUSY));
	if (c->tls_flags & CONN_TLS_OWE_NO_RENEGOTIATION) {
		c->tls_flags &= (uint8_t)~CONN_TLS_OWE_NO_RENEGOTIATION;
		conn_send_record(c, 21, no_renegotiation, sizeof(no_renegotiation));
		return true;
	}
	if (c->tls_flags & CONN_TLS_OWE_KEY_UPDATE) {
		c->tls_flags &= (uint8_t)~CONN_TLS_OWE_KEY_UPDATE;
		conn_send_record(c, 22, key_update, sizeof(key_update));
		return true;
	}
	if ((c->tls_flags & CONN_TLS_OWE_CLOSE_NOTIFY) && !c->out_count) {
		c->tls_flags &= (uint8_t)~CONN_TLS_OWE_CLOSE_NOTIFY;
		conn_send_record(c, 21, close_notify, sizeof(close_notify));
		return true;
	}
	return false;
}

/* Our KeyUpdate went out under the old key: only now may the kernel
 * switch TX to the next one. */
void ktls_control_sent(struct conn *c, uint8_t record_type, int res)
{
	char why[96];
	if (res <= 0) {
		snprintf(why, sizeof(why), "kernel TLS: sending a TLS %s failed: %s",
			 record_type == 22 ? "KeyUpdate" : "alert",
			 res < 0 ? strerror(-res) : "nothing sent");
		c->tls_flags &= (uint8_t)~CONN_TLS_OWED;
		conn_close(c, why, true); /* no-op if already closing */
		return;
	}
	/* Also while closing: a close_notify may still follow. */
	if (record_type != 22)
		return;
	int err = ktls_next_key(c, TLS_KTLS_TX);
	if (err) {
		/* The client already expects the new key: nothing more can
		 * be said to it. */
		snprintf(why, sizeof(why), "kernel TLS: cannot install our "
					   "next TLS key: %s", strerror(err));
		c->tls_flags &= (uint8_t)~CONN_TLS_OWED;
		conn_close(c, why, true);
	}
}
