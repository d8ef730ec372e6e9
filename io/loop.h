/* The loop (io/loop.c): a shard's thread and its turn. It is the top of
 * the engine below the broker: each completion, cross-shard item and tick
 * goes to the unit that owns it, so no unit below has to call up to find
 * out what happened to it (docs/ENGINE.md, "Layers"). */
#ifndef KITE_IO_LOOP_H
#define KITE_IO_LOOP_H

#include "io/shard-t.h"

/* Sets shard idx up (its io_uring, trie, epoll), not its thread. Returns
 * 0; LOOP_INIT_NO_RING_MEMORY when the kernel refused the shard its
 * io_uring for want of memory, not logged: the caller knows why the shard
 * was wanted and what the operator can change (on kernels that charge
 * io_uring's rings to the user's RLIMIT_MEMLOCK, that limit is the usual
 * reason); -1 on any other failure, logged. loop_fini undoes a failed
 * loop_init. */
#define LOOP_INIT_NO_RING_MEMORY (-2)
int loop_init(struct shard *s, struct broker *b, unsigned idx);
int loop_start(struct shard *s);
void loop_fini(struct shard *s);
/* After every shard finished: items still in rings or overflow queues
 * (posted to a shard that had already exited) give back what they hold. */
void loop_discard_pending(struct broker *b);

/* The pieces of a turn (shard_main), for a test that stands where the
 * kernel stands (tests/io/harness.c). loop_complete gives one completion
 * to the unit that owns it; loop_flush_dirty sends what the turn queued
 * for each connection; loop_tick is the 250 ms tick's work (keepalive and
 * CONNECT deadlines, session expiry, delayed wills, $SYS) at s->now_ms. */
struct io_uring_cqe;
void loop_complete(struct shard *s, struct io_uring_cqe *cqe);
void loop_flush_dirty(struct shard *s);
void loop_tick(struct shard *s);

/* Registered with the cluster (cluster_upcalls.connect_resume). */
struct conn;
struct session;
void loop_connect_resume(struct shard *s, struct conn *c, struct session *ss);

#endif
