/* Drives one shard's packet handlers without sockets or threads: the
 * harness stands where the kernel and the loop stand.
 *
 * A harness holds a broker of one shard, built from a config text as
 * kite builds it (config, security snapshot, shard_init with its
 * io_uring), but never started: no listener, no thread, no tick. The test
 * thread is the shard's thread. A connection is a struct conn on listener
 * 0 whose descriptor is -1: nothing ever reaches a socket.
 *
 * Input is a scripted receive completion (harness_input: the bytes go to
 * conn_on_data, as shard_on_recv hands them). Output is read from the
 * submission queue: harness_output flushes the shard's dirty connections
 * as a loop turn ends, then takes every SQE the shard prepared before the
 * kernel sees it, copies the bytes of each send, answers each send and
 * shutdown with a scripted completion (all bytes sent, or send_max of
 * them; shutdown done) and drops the rest, and hands the completions to
 * the loop's dispatch (loop_complete). The shard's clock is injected: the
 * harness gives the shard its own clock_ms, which harness_set_now moves,
 * and harness_tick runs the loop's tick at that time. */
#ifndef KITE_TESTS_IO_HARNESS_H
#define KITE_TESTS_IO_HARNESS_H

#include "core/config.h"
#include "core/gtrie.h"
#include "core/retain.h"
#include "io/broker.h"
#include "io/conn.h"
#include "io/loop.h"
#include "io/msg.h"
#include "io/security.h"
#include "io/session.h"
#include "io/shard.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HARNESS_OUT_MAX 65536
#define HARNESS_CONNS_MAX 8

/* One connection as the test sees it: it outlives the struct conn, which
 * the shard frees once it is closed. */
struct hconn {
	bool used;
	uint32_t id, gen;
	bool shutdown; /* the shard shut the socket down */
	/* The most bytes the "kernel" takes of one send (0: all), as a
	 * full socket buffer takes part of a send. */
	size_t send_max;
	size_t len;    /* bytes sent and not yet read by harness_output */
	uint8_t out[HARNESS_OUT_MAX];
};

struct harness {
	struct kite_config cfg;
	struct broker b;
	struct shard *s;
	struct hconn conns[HARNESS_CONNS_MAX];
};

/* 0; 1 when this kernel or sandbox has no io_uring (the reason in err:
 * the test skips); -1 with the reason in err. */
int harness_init(struct harness *h, const char *config_text, char *err,
		 size_t errlen);
void harness_fini(struct harness *h);

/* A new connection on listener 0 awaiting CONNECT, as an accept leaves
 * it; NULL when HARNESS_CONNS_MAX are in use or memory is short. */
struct hconn *harness_connect(struct harness *h);

/* Closes hc as a vanished peer would (no will), runs the shard until it is
 * freed, and gives its slot back. */
void harness_close(struct harness *h, struct hconn *hc);

/* The connection, or NULL once the shard closed it (closing or freed). */
struct conn *harness_conn(struct harness *h, const struct hconn *hc);

/* A receive completion carrying these bytes (dropped when closed). */
void harness_input(struct harness *h, struct hconn *hc, const void *bytes,
		   size_t len);

/* Ends the loop turn, then returns what the shard sent on hc since the
 * previous call (valid until the next call). */
size_t harness_output(struct harness *h, struct hconn *hc,
		      const uint8_t **bytes);

/* The shard's clock (s->clock_ms) reads now_ms from here on; a turn
 * starts at it. */
void harness_set_now(struct harness *h, uint64_t now_ms);

/* The 250 ms tick runs once at the clock's time: keepalive and CONNECT
 * deadlines, session expiry, delayed wills. */
void harness_tick(struct harness *h);

#endif
