/* Durable state (docs/PERSISTENCE.md): each shard logs the changes to what
 * it owns into its own file, one write per loop turn (fdatasync through
 * its own io_uring); acknowledgements wait for the records they
 * acknowledge.
 *
 * Every function is a no-op (or answers at once) when `persistence` is
 * off: the broker without it pays one branch per hook. */
#ifndef KITE_PERSIST_H
#define KITE_PERSIST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/journal.h"
#include "io/shard-t.h"

struct broker;
struct conn;
struct deliv;
struct held_ack;
struct msg;
struct session;
struct shard;

/* An acknowledgement that waits for records on one or more shards. It
 * travels with the message (XK_DELIVER_T, share forwards); every shard that
 * takes a hold on it gives it back once its records are durable, and the
 * last one hands it to `origin`, which releases the connection's ack. */
struct persist_ticket {
	_Atomic uint32_t pending;
	uint8_t origin;		   /* the shard that completes it */
	uint32_t conn_id, conn_gen; /* whose ack waits (gen 0: nobody's) */
	struct held_ack *held;
	struct msg *msg;	   /* what it travels with, one reference */
	/* Completion on the origin: a QoS 2 release to log first (the
	 * publisher's session and packet id), a connection to flush. */
	uint64_t q2_key;
	uint16_t q2_pid;
	bool q2_release, flush;
	/* A write it waited for failed: under `persistence_sync always`
	 * the acknowledgement is withheld (the connection is closed). */
	_Atomic bool failed;
	/* Another holder could not keep its promise (the cluster's
	 * JetStream did not store the message): the acknowledgement is
	 * withheld whatever the sync mode, so that the client sends again. */
	_Atomic bool refused;
};

static inline bool persist_on(const struct shard *s)
{
	return s->log != NULL;
}

/* What the log asks of the session layer above it: a session whose
 * queue waited for a QoS 2 release goes on. Sessions call down into the
 * log at every change, so this goes through a table, registered once by
 * the broker before the shards start. */
struct persist_upcalls {
	void (*session_pump)(struct session *ss);
};
void persist_set_upcalls(const struct persist_upcalls *up);

/* ---- startup and shutdown ------------------------------------------------ */

/* The logs' files, shared with recovery (io/recover.c), which reads them
 * before the shards start and opens each shard's next generation. */
/* persistence_location/persistence_file (PERSIST_FILE_MAX), its ".kite"
 * directory (PERSIST_DIR_MAX), a log file in it (PERSIST_LOG_PATH_MAX). */
#define PERSIST_FILE_MAX (KITE_PATH_MAX * 2 + 2)
#define PERSIST_DIR_MAX (PERSIST_FILE_MAX + 8)
#define PERSIST_LOG_PATH_MAX (PERSIST_DIR_MAX + 64)
extern char persist_dir[PERSIST_DIR_MAX];
uint64_t persist_wall_ms(void);
int persist_write_all(int fd, const uint8_t *buf, size_t len, uint64_t off);
void persist_fsync_dir(void);
/* background: the snapshot of what s owns is written while s serves
 * (the previous run's files must stay until persist_start_retire says). */
int persist_log_open(struct shard *s, uint64_t gen, uint64_t next_msg,
		     bool background);
/* A log file's name in persist_dir ("shard-N.G.log"). */
#define PERSIST_NAME_MAX 64
/* After a start with background snapshots: these files (names in
 * persist_dir, malloc'ed, taken) are removed once every shard's snapshot
 * is durable, never if one stops before. */
void persist_start_retire(char (*names)[PERSIST_NAME_MAX], size_t n,
			  unsigned nshards);
/* Removes these files of persist_dir (their removal durable on return);
 * the caller made what replaces them durable first. */
void persist_remove_logs(char (*names)[PERSIST_NAME_MAX], size_t n);
/* Gives freed memory back to the system now (jemalloc keeps it until
 * later allocations, which an idle broker does not make). */
void persist_release_heap(void);
static inline struct journal_bytes persist_jb(const void *p, size_t len)
{
	return (struct journal_bytes){p, (uint32_t)len};
}
/* After the shard stopped: last records written and synced, file closed. */
void persist_shard_stop(struct shard *s);

/* ---- what changes (called where it changes) ----------------------------- */

void persist_session(struct session *ss);
void persist_session_end(struct session *ss);
void persist_sub(struct session *ss, const char *filter, uint16_t len,
		 uint32_t options, uint32_t sub_id);
void persist_unsub(struct session *ss, const char *filter, uint16_t len);
/* m reached the session at QoS 1/2 (queued, or sent at once). */
void persist_queue(struct session *ss, struct msg *m, const struct deliv *d);
/* m reached the session at QoS 1/2 and was sent at once under pid: the
 * two records above in one. */
void persist_sent(struct session *ss, struct msg *m, const struct deliv *d,
		  uint16_t pid);
/* state: enum journal_out_state. */
void persist_out(struct session *ss, uint64_t msg_id, uint16_t pid,
		 uint8_t state);
void persist_done(struct session *ss, uint64_t msg_id);
void persist_qos2_in(struct session *ss, uint16_t pid, struct msg *m);
void persist_qos2_rel(struct session *ss, uint16_t pid);
/* The session's delayed will changed (set, fired or cancelled). */
void persist_will(struct session *ss);

/* The id under which m is logged (assigned on first use). */
uint64_t persist_msg_id(struct shard *s, struct msg *m);

/* ---- acknowledgements ---------------------------------------------------- */

/* Queues an acknowledgement on c that leaves once everything this shard
 * logged so far is durable (at once when nothing is pending). */
void persist_ack(struct conn *c, const uint8_t *bytes, size_t len);
/* Whether c's acks may have to wait for the disk (its session is logged):
 * then SUBACK/UNSUBACK go through a held entry, and persist_hold makes
 * that entry wait for everything logged so far. */
bool persist_pending(const struct conn *c);
void persist_hold(struct conn *c, struct held_ack *h);

/* A publish about to be routed: NULL when nothing will need to wait
 * (persistence off). Otherwise routing passes it along; finish with
 * persist_ticket_ack (or _drop) once routing is done. */
struct persist_ticket *persist_ticket_begin(struct shard *s, struct msg *m);
/* A ticket even with persistence off, for a holder other than the log
 * (the cluster's JetStream, io/cluster.h). */
struct persist_ticket *persist_ticket_new(struct shard *s, struct msg *m);
/* Routing is done: `bytes` (the PUBACK/PUBCOMP) leave on c when every
 * shard that logged the message confirmed. len 0: nothing to send. */
void persist_ticket_ack(struct shard *s, struct persist_ticket *t,
			struct conn *c, const uint8_t *bytes, size_t len);
/* Another shard (or a share forward) takes part: it gives it back with
 * persist_ticket_settle. */
void persist_ticket_hold(struct persist_ticket *t);
/* This shard's part is done once what it logged so far is durable. */
void persist_ticket_settle(struct shard *s, struct persist_ticket *t);
/* XK_TICKET: on the origin shard, the last holder let go. */
void persist_ticket_done(struct shard *s, struct persist_ticket *t);
/* Shutdown: a ticket no shard will run any more. */
void persist_ticket_discard(struct persist_ticket *t);

/* Retained messages are logged by shard 0: t travels there (XK_RETAIN_T)
 * unless this is shard 0. */
void persist_retained(struct shard *s, struct msg *m,
		      struct persist_ticket *t);
/* XK_RETAIN_T on shard 0. */
void persist_on_retained(struct shard *s, struct persist_ticket *t);

/* An incoming QoS 2 message released by PUBREL (m: its reference goes):
 * routed with its QoS 2 deliveries held, the release logged once every
 * destination has it on disk, then PUBCOMP and the deliveries go. */
void persist_qos2_route(struct conn *c, struct msg *m, uint16_t pid);
/* XK_Q2_RELEASE: m's QoS 2 deliveries may go (its reference goes). */
void persist_on_q2_release(struct shard *s, struct msg *m);
/* A session whose queue waits for a held QoS 2 message to be released. */
void persist_wait_release(struct session *ss);

/* Sends of c wait until what the shard logged so far is durable: a QoS 2
 * PUBLISH may not leave before its packet id is on disk. */
void persist_gate(struct conn *c);
/* Whether c's sends still wait for the log (conn_flush). */
bool persist_gated(const struct conn *c);

/* ---- the loop ------------------------------------------------------------- */

/* At the end of every turn, before the connections are flushed: this
 * turn's records go into the page cache in one write, and the
 * acknowledgements that waited for them are released to leave in this
 * turn's sends (under `persistence_sync always` they wait for the
 * fdatasync it starts). True when records are left that the next turn
 * should write without sleeping first. */
bool persist_turn_end(struct shard *s);
/* UD_PERSIST completions. */
void persist_on_cqe(struct shard *s, uint32_t what, int res);
/* Every tick: the periodic sync (persistence_sync N). */
void persist_tick(struct shard *s);

#endif
