/* The shard (io/shard.c): one thread, its io_uring loop, its connection
 * slots and sessions by id, and the rings to other shards. The bottom
 * layer of io/: it calls nothing above it. What its completions,
 * cross-shard items and ticks mean is the loop's business (io/loop.h),
 * at the top. */
#ifndef KITE_IO_SHARD_H
#define KITE_IO_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "io/shard-t.h"

/* CLOCK_MONOTONIC in milliseconds: every shard's clock but in tests. */
uint64_t shard_clock_ms(void);
struct xring *shard_xring(struct broker *b, unsigned src, unsigned dst);
/* Hands an item to shard dst; wakes it at the end of this loop turn. */
void shard_post(struct shard *s, unsigned dst, struct xitem it);
/* From the main thread (src row nshards), serialised by ctl_lock. */
void shard_post_from_main(struct broker *b, unsigned dst, struct xitem it);
/* What an item that cannot be delivered holds is freed by fn (the loop
 * registers it: the items' owners are above this layer). */
void shard_set_item_discard(void (*fn)(struct xitem it));
/* The loop's turn (loop.c): overflow into the rings (true while some
 * is left), wakeups to the shards that got items, paused input read
 * again once the queues are short. */
bool shard_flush_overflow(struct shard *s);
void shard_send_wakeups(struct shard *s);
void shard_resume_input(struct shard *s);
struct io_uring_sqe *shard_sqe(struct shard *s);
/* Arms c's multishot receive, unless its input is paused. */
void shard_arm_recv(struct shard *s, struct conn *c);
/* True while some queue to another shard is long: publishers wait. */
bool shard_backlogged(const struct shard *s);
/* Stops reading from c until the shard's backlog has drained. */
void shard_pause_input(struct shard *s, struct conn *c);
/* A reload this shard has not switched to yet; _coming: or a SIGHUP
 * the main thread has not taken yet (one syscall). */
bool shard_reload_pending(const struct shard *s);
bool shard_reload_coming(const struct shard *s);
/* Stops reading from c until `why` (enum conn_park) is over: for
 * PARK_RELOAD, this shard has applied the coming reload; for
 * PARK_TAKEOVER, XK_TAKEN came. Then the input c buffered runs (the
 * loop unparks it: loop.c, shard_unpark_conn). */
void shard_park_input(struct shard *s, struct conn *c, uint8_t why);
/* A SUBSCRIBE on c, one of several shards: parks c (PARK_BARRIER) until
 * every other shard has served the input that reached it before now
 * (the loop posts the round and unparks, loop.c). False when it cannot
 * wait (out of memory): the SUBSCRIBE then runs at once. */
bool shard_barrier_wait(struct shard *s, struct conn *c);
/* A takeover of a session of this shard, run by the loop after this
 * turn's completions (XK_TAKEOVER, or a local one whose old connection
 * is parked and has not run what it sent). */
void shard_queue_takeover(struct shard *s, struct takeover *t);
int shard_conn_attach(struct shard *s, struct conn *c);
void shard_conn_detach(struct shard *s, struct conn *c);
struct conn *shard_conn_lookup(struct shard *s, uint32_t id, uint32_t gen);
/* The connection a completion is for (user_data), or NULL when its slot
 * was reused since. */
struct conn *shard_conn_get(struct shard *s, uint64_t ud);
/* The shard's sessions by id (shared-subscription forwards, persistence
 * tickets find them): session.c indexes each one it creates. */
int shard_session_index(struct shard *s, struct session *ss);
void shard_session_unindex(struct shard *s, struct session *ss);
struct session *shard_session_by_id(struct shard *s, uint64_t id);
/* A drop of n deliveries on s, counted by reason and in the total. */
void shard_stats_drop(struct shard *s, enum drop_reason why, uint64_t n);

#endif
