/* Recovery at startup (docs/PERSISTENCE.md): the shards' logs, or on a
 * first start Mosquitto's database, rebuilt into sessions, queues and
 * retained messages before the shards run; then a fresh generation of
 * logs. It creates sessions, so it sits above the session layer, while
 * the log it reads (persist.c) sits below it. */

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <urcu-qsbr.h>

#include "core/journal.h"
#include "core/mosqdb.h"
#include "core/log.h"
#include "core/htab.h"
#include "core/retain.h"
#include "io/conn-t.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/recover.h"
#include "io/session.h"
#include "io/shard.h"

/* ---- recovery ---------------------------------------------------------------- */

/* What the files say, before it becomes sessions. */
struct rmsg {
	struct htab_link link;
	uint64_t id;
	struct msg *m;
	uint64_t created_wall_ms;
};

struct rsub {
	struct rsub *next;
	uint8_t options;
	uint32_t sub_id;
	uint16_t len;
	char filter[];
};

/* Queued (pid 0) or in flight. Also in recovery.outs by (session key,
 * message id): a session's queue can hold a million messages, and every
 * QUEUE, OUT and DONE record looks one up. */
struct rout {
	struct htab_link link;
	uint64_t skey, msg_id; /* the key: right after the link */
	struct rout *next, **pprev;
	struct rmsg *rm; /* its message when found while reading, else NULL */
	struct deliv d;
	uint16_t pid;
	uint8_t state; /* enum journal_out_state; 0 while queued */
};

struct rqos2 {
	struct rqos2 *next;
	uint16_t pid;
	uint64_t msg_id;
};

struct rsess {
	struct htab_link link;
	uint64_t key;
	char *client_id;
	uint16_t id_len;
	uint32_t expiry_s;
	uint64_t offline_wall_ms;
	uint8_t protocol, listener;
	char *username;
	struct rsub *subs;
	struct rout *out, **out_tail;
	struct rqos2 *qos2;
	uint64_t will_msg, will_at_wall_ms;
	uint16_t last_pid; /* of the last SESSION or OUT record */
	uint64_t top_out; /* highest message id queued to it: as top_msg */
	struct htab_link by_id; /* build_all: newest session per client id */
	bool superseded;
};

struct rretain {
	struct htab_link link;
	uint64_t msg_id;
	struct rmsg *rm; /* as rout's */
	uint16_t len;
	char topic[];
};

struct recovery {
	struct htab msgs, sessions, retained, outs;
	/* The files hold a MSG record just before the QUEUE or RETAIN record
	 * that uses it, and a session's records together: remembering the
	 * last of each spares a hash lookup (a cache miss or two, most of
	 * the reading's time) for most records. Entries are only freed
	 * after reading, except a session at its SESSION_END. */
	struct rmsg *last_msg;
	struct rsess *last_sess;
	/* The highest message id read so far: a MSG record above it cannot
	 * repeat one, and needs no lookup (live logs grow in id order). */
	uint64_t top_msg;
	uint64_t max_key, max_msg;
	uint32_t records, files, unresolved;
	/* One instant on both clocks: a message's creation time (wall, in
	 * the files) becomes monotonic as it is read. */
	uint64_t now_mono, now_wall;
};

static uint64_t mono_from_wall(uint64_t now_mono, uint64_t now_wall,
			       uint64_t wall)
{
	if (wall >= now_wall)
		return now_mono + (wall - now_wall);
	uint64_t ago = now_wall - wall;
	return ago < now_mono ? now_mono - ago : 0;
}

static bool u64_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	/* Both entry types start their key right after the link. */
	return *(const uint64_t *)(l + 1) == *(const uint64_t *)key;
}

static uint64_t u64_hash(uint64_t v)
{
	return hash_bytes(&v, sizeof(v));
}

_Static_assert(offsetof(struct rmsg, id) == sizeof(struct htab_link), "key after link");
_Static_assert(offsetof(struct rsess, key) == sizeof(struct htab_link), "key after link");

static struct rsess *rsess_find(struct recovery *rc, uint64_t key)
{
	return htab_entry(htab_find(&rc->sessions, u64_hash(key), &key, 8, u64_eq_cb),
			  struct rsess, link);
}

static struct rmsg *rmsg_find(struct recovery *rc, uint64_t id)
{
	return htab_entry(htab_find(&rc->msgs, u64_hash(id), &id, 8, u64_eq_cb),
			  struct rmsg, link);
}

static bool topic_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct rretain *r = htab_entry(l, const struct rretain, link);
	return r->len == len && !memcmp(r->topic, key, len);
}

/* outs: the table the session's queue is in, or NULL when that table is
 * already gone. */
static void rsess_free_items(struct rsess *rs, struct htab *outs)
{
	while (rs->subs) {
		struct rsub *n = rs->subs->next;
		free(rs->subs);
		rs->subs = n;
	}
	while (rs->out) {
		struct rout *n = rs->out->next;
		if (outs)
			htab_remove(outs, &rs->out->link);
		free(rs->out);
		rs->out = n;
	}
	rs->out_tail = &rs->out;
	while (rs->qos2) {
		struct rqos2 *n = rs->qos2->next;
		free(rs->qos2);
		rs->qos2 = n;
	}
}

static void rout_unindex(struct htab_link *l)
{
	(void)l;
}

static void rsess_free(struct htab_link *l)
{
	struct rsess *rs = htab_entry(l, struct rsess, link);
	rsess_free_items(rs, NULL);
	free(rs->client_id);
	free(rs->username);
	free(rs);
}

static void rmsg_free(struct htab_link *l)
{
	struct rmsg *r = htab_entry(l, struct rmsg, link);
	msg_unref(r->m);
	free(r);
}

static void unlink_cb(struct htab_link *l)
{
	(void)l; /* the entries belong to rc.sessions */
}

static void rretain_free(struct htab_link *l)
{
	free(htab_entry(l, struct rretain, link));
}

static char *dup_bytes(struct journal_bytes b)
{
	char *p = malloc((size_t)b.len + 1);
	if (p) {
		memcpy(p, b.ptr, b.len);
		p[b.len] = 0;
	}
	return p;
}

static int apply_session(struct recovery *rc, const struct journal_record *r)
{
	struct rsess *rs = rsess_find(rc, r->session.key);
	if (!rs) {
		if (!(rs = calloc(1, sizeof(*rs))))
			return -1;
		rs->key = r->session.key;
		rs->out_tail = &rs->out;
		if (htab_insert(&rc->sessions, &rs->link, u64_hash(rs->key)) < 0) {
			free(rs);
			return -1;
		}
	}
	free(rs->client_id);
	free(rs->username);
	rs->client_id = dup_bytes(r->session.client_id);
	rs->id_len = (uint16_t)r->session.client_id.len;
	rs->username = r->session.has_username ? dup_bytes(r->session.username) : NULL;
	rs->expiry_s = r->session.expiry_s;
	rs->offline_wall_ms = r->session.offline_wall_ms;
	rs->protocol = r->session.protocol;
	rs->listener = r->session.listener;
	if (r->session.last_pid)
		rs->last_pid = r->session.last_pid;
	if (r->session.key > rc->max_key)
		rc->max_key = r->session.key;
	rc->last_sess = rs;
	return rs->client_id ? 0 : -1;
}

static int apply_sub(struct rsess *rs, const struct journal_record *r, bool add)
{
	struct journal_bytes f = add ? r->sub.filter : r->unsub.filter;
	for (struct rsub **pp = &rs->subs; *pp; pp = &(*pp)->next) {
		if ((*pp)->len == f.len && !memcmp((*pp)->filter, f.ptr, f.len)) {
			struct rsub *old = *pp;
			*pp = old->next;
			free(old);
			break;
		}
	}
	if (!add)
		return 0;
	struct rsub *n = malloc(sizeof(*n) + f.len);
	if (!n)
		return -1;
	n->options = r->sub.options;
	n->sub_id = r->sub.sub_id;
	n->len = (uint16_t)f.len;
	memcpy(n->filter, f.ptr, f.len);
	struct rsub **tail = &rs->subs;
	while (*tail)
		tail = &(*tail)->next;
	n->next = NULL;
	*tail = n;
	return 0;
}

static int apply_msg(struct recovery *rc, const struct journal_record *r)
{
	if (r->msg.id <= rc->top_msg &&
	    (rc->last_msg = rmsg_find(rc, r->msg.id)))
		return 0; /* the same message, logged again */
	if (r->msg.id > rc->top_msg)
		rc->top_msg = r->msg.id;
	struct rmsg *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	e->id = r->msg.id;
	e->created_wall_ms = r->msg.created_wall_ms;
	e->m = msg_new(r->msg.topic.ptr, (uint16_t)r->msg.topic.len,
		       r->msg.payload.ptr, r->msg.payload.len, r->msg.qos,
		       r->msg.retain, r->msg.props.ptr, r->msg.props.len);
	if (!e->m || htab_insert(&rc->msgs, &e->link, u64_hash(e->id)) < 0) {
		if (e->m)
			msg_unref(e->m);
		free(e);
		return -1;
	}
	e->m->expiry_s = r->msg.expiry_s;
	e->m->created_ms = mono_from_wall(rc->now_mono, rc->now_wall,
					  e->created_wall_ms);
	atomic_store(&e->m->log_id, e->id);
	rc->last_msg = e;
	if ((e->id & ((1ull << 56) - 1)) > rc->max_msg)
		rc->max_msg = e->id & ((1ull << 56) - 1);
	return 0;
}

static bool rout_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	return !memcmp(l + 1, key, 16);
}

_Static_assert(offsetof(struct rout, skey) == sizeof(struct htab_link) &&
		       offsetof(struct rout, msg_id) == sizeof(struct htab_link) + 8,
	       "key after link");

static struct rout *rout_find(struct recovery *rc, const struct rsess *rs,
			      uint64_t msg_id)
{
	uint64_t key[2] = {rs->key, msg_id};
	return htab_entry(htab_find(&rc->outs, hash_bytes(key, 16), key, 16,
				    rout_eq_cb),
			  struct rout, link);
}

/* Takes o (calloc'ed, msg_id set) onto the end of rs's queue; -1 when the
 * table cannot grow (o is freed). */
static int rout_append(struct recovery *rc, struct rsess *rs, struct rout *o)
{
	o->skey = rs->key;
	if (htab_insert(&rc->outs, &o->link, hash_bytes(&o->skey, 16)) < 0) {
		free(o);
		return -1;
	}
	if (o->msg_id > rs->top_out)
		rs->top_out = o->msg_id;
	o->next = NULL;
	o->pprev = rs->out_tail;
	*rs->out_tail = o;
	rs->out_tail = &o->next;
	return 0;
}

static struct rmsg *last_msg_if(const struct recovery *rc, uint64_t id)
{
	return rc->last_msg && rc->last_msg->id == id ? rc->last_msg : NULL;
}

static int apply_queue(struct recovery *rc, struct rsess *rs,
		       const struct journal_record *r)
{
	if (r->queue.msg_id <= rs->top_out &&
	    rout_find(rc, rs, r->queue.msg_id))
		return 0;
	struct rout *o = calloc(1, sizeof(*o));
	if (!o)
		return -1;
	o->msg_id = r->queue.msg_id;
	o->rm = last_msg_if(rc, o->msg_id);
	o->d.qos = r->queue.qos;
	o->d.retain = r->queue.retain;
	o->d.nsub = r->queue.nsub;
	memcpy(o->d.sub, r->queue.sub, sizeof(o->d.sub));
	return rout_append(rc, rs, o);
}

static int apply_out(struct recovery *rc, struct rsess *rs,
		     const struct journal_record *r)
{
	rs->last_pid = r->out.pid;
	struct rout *o = rout_find(rc, rs, r->out.msg_id);
	if (!o && r->out.state == JOURNAL_WAIT_PUBCOMP) {
		/* Only PUBCOMP is left: the message itself is not needed. */
		if (!(o = calloc(1, sizeof(*o))))
			return -1;
		o->msg_id = r->out.msg_id;
		o->d.qos = 2;
		if (rout_append(rc, rs, o) < 0)
			return -1;
	}
	if (o) {
		o->pid = r->out.pid;
		o->state = r->out.state;
	}
	return 0;
}

/* QUEUE then OUT, in one entry: a copy queued already (a snapshot
 * restating it) keeps its place, as QUEUE does, and takes the packet id. */
static int apply_sent(struct recovery *rc, struct rsess *rs, uint64_t msg_id,
		      const struct journal_sent *e)
{
	rs->last_pid = e->pid;
	struct rout *o = msg_id <= rs->top_out ? rout_find(rc, rs, msg_id) : NULL;
	if (!o) {
		if (!(o = calloc(1, sizeof(*o))))
			return -1;
		o->msg_id = msg_id;
		o->rm = last_msg_if(rc, msg_id);
		o->d.qos = e->qos;
		o->d.retain = e->retain;
		o->d.nsub = e->nsub;
		memcpy(o->d.sub, e->sub, sizeof(o->d.sub));
		if (rout_append(rc, rs, o) < 0)
			return -1;
	}
	o->pid = e->pid;
	o->state = e->qos == 1 ? JOURNAL_WAIT_PUBACK : JOURNAL_WAIT_PUBREC;
	return 0;
}

static void apply_done(struct recovery *rc, struct rsess *rs, uint64_t msg_id)
{
	struct rout *o = rout_find(rc, rs, msg_id);
	if (!o)
		return;
	htab_remove(&rc->outs, &o->link);
	*o->pprev = o->next;
	if (o->next)
		o->next->pprev = o->pprev;
	else
		rs->out_tail = o->pprev;
	free(o);
}

static int apply_qos2(struct rsess *rs, const struct journal_record *r, bool add)
{
	uint16_t pid = add ? r->qos2_in.pid : r->qos2_rel.pid;
	for (struct rqos2 **pp = &rs->qos2; *pp; pp = &(*pp)->next)
		if ((*pp)->pid == pid) {
			struct rqos2 *old = *pp;
			*pp = old->next;
			free(old);
			break;
		}
	if (!add)
		return 0;
	struct rqos2 *n = malloc(sizeof(*n));
	if (!n)
		return -1;
	n->pid = pid;
	n->msg_id = r->qos2_in.msg_id;
	n->next = rs->qos2;
	rs->qos2 = n;
	return 0;
}

static int apply_retain(struct recovery *rc, const struct journal_record *r)
{
	struct journal_bytes t = r->retain.topic;
	uint64_t h = hash_bytes(t.ptr, t.len);
	struct rretain *e = htab_entry(htab_find(&rc->retained, h, t.ptr, t.len,
						 topic_eq_cb),
				       struct rretain, link);
	if (!r->retain.msg_id) {
		if (e) {
			htab_remove(&rc->retained, &e->link);
			free(e);
		}
		return 0;
	}
	if (!e) {
		if (!(e = malloc(sizeof(*e) + t.len)))
			return -1;
		e->len = (uint16_t)t.len;
		memcpy(e->topic, t.ptr, t.len);
		if (htab_insert(&rc->retained, &e->link, h) < 0) {
			free(e);
			return -1;
		}
	}
	e->msg_id = r->retain.msg_id;
	e->rm = last_msg_if(rc, e->msg_id);
	struct rmsg *rm = !r->retain.has_source ? NULL
			  : e->rm ? e->rm : rmsg_find(rc, e->msg_id);
	if (rm && !rm->m->source) {
		const struct journal_bytes id = r->retain.source_client_id;
		const struct journal_bytes un = r->retain.source_username;
		rm->m->source = msg_source_new(
			r->retain.source_listener, (const char *)id.ptr, id.len,
			r->retain.source_has_username ? (const char *)un.ptr : NULL,
			un.len);
		if (!rm->m->source)
			return -1;
	}
	return 0;
}

static struct rsess *rsess_of(struct recovery *rc, uint64_t key)
{
	struct rsess *rs = rc->last_sess && rc->last_sess->key == key
				   ? rc->last_sess : rsess_find(rc, key);
	if (!rs)
		rc->unresolved++;
	else
		rc->last_sess = rs;
	return rs;
}

/* Each entry as QUEUE then OUT; an unknown session's are dropped. */
static int apply_sents(struct recovery *rc, const struct journal_record *r)
{
	struct journal_bytes list = r->sent.list;
	uint64_t key = 0;
	struct journal_sent e;
	while (journal_sent_next(&list, &key, &e)) {
		struct rsess *rs = rsess_of(rc, e.key);
		if (rs && apply_sent(rc, rs, r->sent.msg_id, &e) < 0)
			return -1;
	}
	return 0;
}

/* Each entry as a DONE record; an unknown session's are dropped. */
static void apply_acks(struct recovery *rc, const struct journal_record *r)
{
	struct journal_bytes list = r->acks.list;
	struct journal_ack a = {0};
	while (journal_ack_next(&list, &a)) {
		struct rsess *rs = rsess_of(rc, a.key);
		if (rs)
			apply_done(rc, rs, a.msg_id);
	}
}

/* One record; records about a session that is not (yet) known are
 * dropped: a snapshot of it further on restates them. */
static int apply(struct recovery *rc, const struct journal_record *r)
{
	uint64_t key = 0;
	switch (r->type) {
	case JOURNAL_SESSION:
		return apply_session(rc, r);
	case JOURNAL_MSG:
		return apply_msg(rc, r);
	case JOURNAL_RETAIN:
		return apply_retain(rc, r);
	case JOURNAL_SNAPSHOT_END:
		return 0;
	case JOURNAL_ACKS:
		apply_acks(rc, r);
		return 0;
	case JOURNAL_SENT:
		return apply_sents(rc, r);
	case JOURNAL_SESSION_END: key = r->session_end.key; break;
	case JOURNAL_SUB: key = r->sub.key; break;
	case JOURNAL_UNSUB: key = r->unsub.key; break;
	case JOURNAL_QUEUE: key = r->queue.key; break;
	case JOURNAL_OUT: key = r->out.key; break;
	case JOURNAL_DONE: key = r->done.key; break;
	case JOURNAL_QOS2_IN: key = r->qos2_in.key; break;
	case JOURNAL_QOS2_REL: key = r->qos2_rel.key; break;
	case JOURNAL_WILL: key = r->will.key; break;
	}
	struct rsess *rs = rc->last_sess && rc->last_sess->key == key
				   ? rc->last_sess : rsess_find(rc, key);
	if (!rs) {
		rc->unresolved++;
		return 0;
	}
	rc->last_sess = rs;
	switch (r->type) {
	case JOURNAL_SESSION_END:
		rc->last_sess = NULL;
		htab_remove(&rc->sessions, &rs->link);
		rsess_free_items(rs, &rc->outs);
		rsess_free(&rs->link);
		return 0;
	case JOURNAL_SUB:
		return apply_sub(rs, r, true);
	case JOURNAL_UNSUB:
		return apply_sub(rs, r, false);
	case JOURNAL_QUEUE:
		return apply_queue(rc, rs, r);
	case JOURNAL_OUT:
		return apply_out(rc, rs, r);
	case JOURNAL_DONE:
		apply_done(rc, rs, r->done.msg_id);
		return 0;
	case JOURNAL_QOS2_IN:
		return apply_qos2(rs, r, true);
	case JOURNAL_QOS2_REL:
		return apply_qos2(rs, r, false);
	case JOURNAL_WILL:
		rs->will_msg = r->will.msg_id;
		rs->will_at_wall_ms = r->will.at_wall_ms;
		return 0;
	}
	return 0;
}

/* Reads one log file into rc; a damaged file loses what is damaged. */
static int recover_file(struct recovery *rc, const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		log_msg(KITE_LOG_ERR, "Persistence: cannot read %s: %s", path,
			strerror(errno));
		if (fd >= 0)
			close(fd);
		return 0; /* what else there is still counts */
	}
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len ? len : 1);
	ssize_t got = 0;
	while (buf && (size_t)got < len) {
		ssize_t n = pread(fd, buf + got, len - (size_t)got, got);
		if (n <= 0)
			break;
		got += n;
	}
	close(fd);
	if (!buf || (size_t)got != len) {
		log_msg(KITE_LOG_ERR, "Persistence: cannot read %s: %s", path,
			buf ? strerror(errno) : "out of memory");
		free(buf);
		return buf ? 0 : -1;
	}
	uint32_t shard;
	uint64_t gen;
	const char *why;
	if (journal_header_check(buf, len, &shard, &gen, &why) < 0) {
		log_msg(KITE_LOG_ERR, "Persistence: %s skipped: %s", path, why);
		free(buf);
		return 0;
	}
	struct journal_reader rd;
	journal_reader_init(&rd, buf + JOURNAL_HEADER_LEN, len - JOURNAL_HEADER_LEN);
	struct journal_record r;
	int rcode = 0;
	while (rcode == 0 && journal_next(&rd, &r) == 1) {
		rc->records++;
		rcode = apply(rc, &r);
	}
	if (rd.skipped)
		log_msg(KITE_LOG_WARNING, "Persistence: %s: %u damaged records "
			"(%llu bytes) skipped", path, rd.skipped,
			(unsigned long long)rd.skipped_bytes);
	if (rd.torn)
		log_msg(KITE_LOG_WARNING, "Persistence: %s: torn tail of %zu "
			"bytes at offset %zu cut off (a write the stop interrupted)",
			path, rd.torn_bytes, rd.torn_at + JOURNAL_HEADER_LEN);
	rc->files++;
	free(buf);
	if (rcode < 0)
		log_msg(KITE_LOG_ERR, "Persistence: out of memory reading %s", path);
	return rcode;
}

struct log_file {
	unsigned shard;
	uint64_t gen;
	char name[PERSIST_NAME_MAX];
};

/* Generation first: a session lives on one shard for a run, but may live
 * on another the next run (the client id's hash is keyed per process),
 * and a start whose background snapshot did not finish leaves the
 * previous run's files beside the new generation's, which must be read
 * after them. Within one run the shards' files are independent. */
static int log_file_cmp(const void *a, const void *b)
{
	const struct log_file *x = a, *y = b;
	if (x->gen != y->gen)
		return x->gen < y->gen ? -1 : 1;
	return x->shard < y->shard ? -1 : x->shard > y->shard;
}

/* kite's logs in the directory, by generation then shard. */
static int list_logs(struct log_file **out, size_t *n, uint64_t *max_gen)
{
	DIR *d = opendir(persist_dir);
	*out = NULL;
	*n = 0;
	*max_gen = 0;
	if (!d)
		return -1;
	struct dirent *de;
	size_t cap = 0;
	while ((de = readdir(d))) {
		unsigned shard;
		unsigned long long gen;
		char tail[8];
		if (sscanf(de->d_name, "shard-%u.%llu.%7s", &shard, &gen, tail) != 3 ||
		    strcmp(tail, "log") || strlen(de->d_name) >= PERSIST_NAME_MAX)
			continue;
		if (*n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct log_file *nf = realloc(*out, sizeof(*nf) * ncap);
			if (!nf) {
				closedir(d);
				return -1;
			}
			*out = nf;
			cap = ncap;
		}
		(*out)[*n] = (struct log_file){shard, gen, ""};
		snprintf((*out)[*n].name, sizeof((*out)[*n].name), "%s", de->d_name);
		if (gen > *max_gen)
			*max_gen = gen;
		(*n)++;
	}
	closedir(d);
	if (*n)
		qsort(*out, *n, sizeof(**out), log_file_cmp);
	return 0;
}

static bool rsess_id_eq_cb(const struct htab_link *l, const void *key,
			   size_t len);

/* ---- importing Mosquitto's database --------------------------------------- */

/* Turns Mosquitto 2.0's mosquitto.db into the same recovery state kite's
 * own records give (core/mosqdb.c reads it). Sessions get fresh keys;
 * usernames are not taken (2.0.11 writes stale ones; the next CONNECT
 * sets the identity anyway). */
struct mimport {
	struct recovery *rc;
	const struct kite_config *cfg;
	struct htab by_id; /* client id -> rsess */
	uint64_t now_wall;
	uint32_t msgs, retained, clients, subs, queued, skipped;
};

static struct rsess *mimport_session(struct mimport *mi, struct mqtt_bytes id)
{
	uint64_t h = hash_bytes(id.ptr, id.len);
	return htab_entry(htab_find(&mi->by_id, h, id.ptr, id.len, rsess_id_eq_cb),
			  struct rsess, by_id);
}

static int mimport_msg_cb(void *ctx, const struct mosqdb_msg *m)
{
	struct mimport *mi = ctx;
	struct journal_record r = {.type = JOURNAL_MSG};
	r.msg.id = m->store_id;
	r.msg.qos = m->qos;
	r.msg.retain = m->retain;
	r.msg.topic = persist_jb(m->topic.ptr, m->topic.len);
	r.msg.payload = persist_jb(m->payload.ptr, m->payload.len);
	r.msg.props = persist_jb(m->props.raw.ptr, m->props.raw.len);
	r.msg.created_wall_ms = mi->now_wall;
	if (m->expiry_time > 0) {
		int64_t left = m->expiry_time - (int64_t)(mi->now_wall / 1000);
		r.msg.expiry_s = left > 0 ? (uint32_t)left : 1;
	}
	mi->msgs++;
	if (apply_msg(mi->rc, &r) < 0)
		return -1;
	/* The publisher, which check_retain_source asks about a retained
	 * message: Mosquitto keeps it with every stored message, on the
	 * listener of the port it came in on. */
	struct rmsg *e = m->retain && m->source_id.len ? mi->rc->last_msg
						       : NULL;
	if (e && !e->m->source) {
		uint8_t li = 0;
		for (unsigned i = 0; i < mi->cfg->listener_count; i++)
			if (mi->cfg->listeners[i].port == m->source_port) {
				li = (uint8_t)i;
				break;
			}
		e->m->source = msg_source_new(
			li, (const char *)m->source_id.ptr, m->source_id.len,
			m->source_username.len
				? (const char *)m->source_username.ptr : NULL,
			m->source_username.len);
		if (!e->m->source)
			return -1;
	}
	return 0;
}

static int mimport_retain_cb(void *ctx, const struct mosqdb_retain *m)
{
	struct mimport *mi = ctx;
	struct rmsg *e = rmsg_find(mi->rc, m->store_id);
	if (!e) {
		mi->skipped++;
		return 0;
	}
	struct journal_record r = {.type = JOURNAL_RETAIN};
	r.retain.msg_id = m->store_id;
	r.retain.topic = persist_jb(msg_topic(e->m), e->m->topic_len);
	mi->retained++;
	return apply_retain(mi->rc, &r);
}

static int mimport_client_cb(void *ctx, const struct mosqdb_client *m)
{
	struct mimport *mi = ctx;
	if (mimport_session(mi, m->client_id))
		return 0;
	struct journal_record r = {.type = JOURNAL_SESSION};
	r.session.key = ++mi->rc->max_key;
	r.session.expiry_s = m->session_expiry_interval;
	r.session.protocol = m->session_expiry_interval == UINT32_MAX ? 4 : 5;
	r.session.client_id = persist_jb(m->client_id.ptr, m->client_id.len);
	r.session.last_pid = m->last_mid; /* packet ids go on from it */
	/* Offline since Mosquitto saved it (its expiry time says when it
	 * would have ended). */
	r.session.offline_wall_ms = mi->now_wall;
	if (m->session_expiry_time > 0 && m->session_expiry_interval != UINT32_MAX) {
		int64_t since = m->session_expiry_time -
				(int64_t)m->session_expiry_interval;
		r.session.offline_wall_ms = since > 0 ? (uint64_t)since * 1000u : 1;
	}
	if (apply_session(mi->rc, &r) < 0)
		return -1;
	struct rsess *rs = rsess_find(mi->rc, r.session.key);
	uint64_t h = hash_bytes(rs->client_id, rs->id_len);
	if (htab_insert(&mi->by_id, &rs->by_id, h) < 0)
		return -1;
	mi->clients++;
	return 0;
}

static int mimport_sub_cb(void *ctx, const struct mosqdb_sub *m)
{
	struct mimport *mi = ctx;
	struct rsess *rs = mimport_session(mi, m->client_id);
	if (!rs) {
		mi->skipped++;
		return 0;
	}
	struct journal_record r = {.type = JOURNAL_SUB};
	r.sub.options = (uint8_t)((m->qos & SUB_QOS_MASK) |
				  (m->no_local ? SUB_NO_LOCAL : 0) |
				  (m->retain_as_published ? SUB_RETAIN_AS_PUBLISHED : 0));
	r.sub.sub_id = m->identifier;
	r.sub.filter = persist_jb(m->filter.ptr, m->filter.len);
	mi->subs++;
	return apply_sub(rs, &r, true);
}

static int mimport_client_msg_cb(void *ctx, const struct mosqdb_client_msg *m)
{
	struct mimport *mi = ctx;
	struct rsess *rs = mimport_session(mi, m->client_id);
	if (!rs || !rmsg_find(mi->rc, m->store_id)) {
		mi->skipped++;
		return 0;
	}
	struct journal_record r;
	if (m->direction == MOSQDB_DIR_IN) {
		if (m->state != MOSQDB_STATE_WAIT_FOR_PUBREL &&
		    m->state != MOSQDB_STATE_SEND_PUBREC)
			return 0;
		r = (struct journal_record){.type = JOURNAL_QOS2_IN};
		r.qos2_in.msg_id = m->store_id;
		r.qos2_in.pid = m->mid;
		mi->queued++;
		return r.qos2_in.pid ? apply_qos2(rs, &r, true) : 0;
	}
	if (m->qos == 0)
		return 0;
	r = (struct journal_record){.type = JOURNAL_QUEUE};
	r.queue.msg_id = m->store_id;
	r.queue.qos = m->qos;
	r.queue.retain = m->retain;
	if (m->props.subscription_identifier) {
		r.queue.nsub = 1;
		r.queue.sub[0] = m->props.subscription_identifier;
	}
	if (apply_queue(mi->rc, rs, &r) < 0)
		return -1;
	mi->queued++;
	uint8_t state = m->state == MOSQDB_STATE_WAIT_FOR_PUBACK ? JOURNAL_WAIT_PUBACK
			: m->state == MOSQDB_STATE_WAIT_FOR_PUBREC ? JOURNAL_WAIT_PUBREC
			: (m->state == MOSQDB_STATE_RESEND_PUBREL ||
			   m->state == MOSQDB_STATE_WAIT_FOR_PUBCOMP) ? JOURNAL_WAIT_PUBCOMP
			: 0;
	if (!state || !m->mid)
		return 0; /* queued: it gets a packet id when it is sent */
	r = (struct journal_record){.type = JOURNAL_OUT};
	r.out.msg_id = m->store_id;
	r.out.pid = m->mid;
	r.out.state = state;
	return apply_out(mi->rc, rs, &r);
}

/* persistence_location/persistence_file: Mosquitto's database. */
static void persist_file_path(const struct kite_config *cfg,
			      char out[PERSIST_FILE_MAX])
{
	const char *loc = cfg->persistence_location[0] ? cfg->persistence_location
						       : ".";
	snprintf(out, PERSIST_FILE_MAX, "%s%s%s", loc,
		 loc[strlen(loc) - 1] == '/' ? "" : "/",
		 cfg->persistence_file);
}

/* Mosquitto's database, when kite has no logs of its own yet. 0 (also
 * when there is none, or it is damaged: the log says what was taken), or
 * -1 out of memory. */
static int import_mosquitto(struct recovery *rc, const struct kite_config *cfg)
{
	char path[PERSIST_FILE_MAX];
	persist_file_path(cfg, path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	struct stat st;
	uint8_t *buf = NULL;
	size_t len = 0;
	if (fstat(fd, &st) == 0 && (buf = malloc(st.st_size ? (size_t)st.st_size : 1))) {
		while (len < (size_t)st.st_size) {
			ssize_t n = pread(fd, buf + len, (size_t)st.st_size - len, (off_t)len);
			if (n <= 0)
				break;
			len += (size_t)n;
		}
	}
	close(fd);
	if (!buf)
		return -1;
	struct mimport mi = {.rc = rc, .cfg = cfg,
			     .now_wall = persist_wall_ms()};
	struct mosqdb_visitor v = {
		.msg_cb = mimport_msg_cb,
		.retain_cb = mimport_retain_cb,
		.client_cb = mimport_client_cb,
		.sub_cb = mimport_sub_cb,
		.client_msg_cb = mimport_client_msg_cb,
	};
	struct mosqdb_status ms;
	int r = mosqdb_read(buf, len, &v, &mi, &ms);
	free(buf);
	htab_fini(&mi.by_id, unlink_cb);
	if (r == MOSQDB_STOPPED)
		return -1; /* a callback ran out of memory */
	if (r != MOSQDB_OK)
		log_msg(KITE_LOG_WARNING, "Persistence: %s: %s: %s; what came "
			"before it is imported", path, mosqdb_rc_name(r), ms.err);
	log_msg(KITE_LOG_NOTICE, "Persistence: imported Mosquitto's %s (format "
		"%u): %u messages, %u retained, %u sessions, %u subscriptions, "
		"%u queued or in flight, %u references skipped; the file is "
		"left as it was.", path, ms.version, mi.msgs, mi.retained,
		mi.clients, mi.subs, mi.queued, mi.skipped);
	return 0;
}

/* ---- from recovery to the running broker ---------------------------------- */

/* Whether a session the files hold has ended while kite was down. */
static bool rsess_expired(const struct broker *b, const struct rsess *rs,
			  uint64_t now_wall, uint64_t *left_ms)
{
	*left_ms = UINT64_MAX;
	/* Connected when kite stopped: offline from now. */
	uint64_t since = rs->offline_wall_ms ? rs->offline_wall_ms : now_wall;
	uint64_t span_s = rs->expiry_s;
	if (span_s == UINT32_MAX) {
		span_s = b->cfg->persistent_client_expiration_s;
		if (!span_s)
			return false;
	}
	uint64_t end = since + span_s * 1000u;
	if (end <= now_wall)
		return true;
	*left_ms = end - now_wall;
	return false;
}

struct build {
	struct broker *b;
	struct recovery *rc;
	uint64_t now_mono, now_wall;
	uint32_t sessions, messages, dropped_expired, dropped_dup, dropped_bridge;
	uint32_t unreleased;
	/* Incoming QoS 2 messages whose release was not durable: copies
	 * routed before the stop are dropped (the publisher sends PUBREL
	 * again, and it is routed once). */
	struct htab held;
};

struct held_id {
	struct htab_link link;
	uint64_t id;
};

_Static_assert(offsetof(struct held_id, id) == sizeof(struct htab_link), "key after link");

static bool build_is_unreleased(struct build *bd, uint64_t id)
{
	return htab_find(&bd->held, u64_hash(id), &id, 8, u64_eq_cb) != NULL;
}

static void build_collect_unreleased(struct build *bd)
{
	struct recovery *rc = bd->rc;
	for (size_t i = 0; rc->sessions.bucket && i <= rc->sessions.mask; i++)
		for (struct htab_link *l = rc->sessions.bucket[i]; l; l = l->next) {
			struct rsess *rs = htab_entry(l, struct rsess, link);
			for (struct rqos2 *q = rs->qos2; q; q = q->next) {
				if (build_is_unreleased(bd, q->msg_id))
					continue;
				struct held_id *h = malloc(sizeof(*h));
				if (!h)
					continue;
				h->id = q->msg_id;
				if (htab_insert(&bd->held, &h->link, u64_hash(h->id)) < 0)
					free(h);
			}
		}
}

static void held_id_free(struct htab_link *l)
{
	free(htab_entry(l, struct held_id, link));
}

/* unresolved: the caller's count (the retained store is built by a
 * thread of its own). */
static struct msg *build_msg_counted(struct recovery *rc, uint64_t id,
				     struct rmsg *hint, uint32_t *unresolved)
{
	struct rmsg *e = hint ? hint : rmsg_find(rc, id);
	if (!e) {
		(*unresolved)++;
		return NULL;
	}
	return e->m;
}

static struct msg *build_msg(struct build *bd, uint64_t id, struct rmsg *hint)
{
	return build_msg_counted(bd->rc, id, hint, &bd->rc->unresolved);
}

static void build_will(struct build *bd, struct session *ss,
		       const struct rsess *rs)
{
	struct msg *m = rs->will_msg ? build_msg(bd, rs->will_msg, NULL) : NULL;
	struct will *w = m ? calloc(1, sizeof(*w)) : NULL;
	if (!w)
		return;
	w->msg = msg_ref(m);
	w->qos = m->qos;
	w->retain = m->retain;
	ss->delayed_will = w;
	ss->will_at_ms = mono_from_wall(bd->now_mono, bd->now_wall,
					rs->will_at_wall_ms);
	session_timer_at(ss->shard, ss->will_at_ms);
}

/* The configured bridge whose local side a logged session ("\0" + its
 * local_clientid) was, or -1 when none is now (or it keeps a clean local
 * session, local_cleansession true). */
static int bridge_of_session(const struct kite_config *cfg,
			     const struct rsess *rs)
{
	for (unsigned i = 0; i < cfg->bridge_count; i++) {
		const struct kite_bridge_cfg *k = &cfg->bridges[i];
		bool clean = k->local_cleansession < 0 ? k->cleansession
						       : k->local_cleansession;
		if (!clean && strlen(k->local_clientid) == rs->id_len - 1u &&
		    !memcmp(k->local_clientid, rs->client_id + 1, rs->id_len - 1u))
			return (int)i;
	}
	return -1;
}

static void build_session(struct build *bd, struct rsess *rs)
{
	struct broker *b = bd->b;
	uint64_t left_ms = UINT64_MAX;
	const char *id = rs->client_id;
	uint16_t id_len = rs->id_len;
	int bridge = -1;
	if (id_len && !id[0]) {
		bridge = bridge_of_session(b->cfg, rs);
		if (bridge < 0) {
			bd->dropped_bridge++;
			log_msg(KITE_LOG_WARNING, "Persistence: the local session "
				"of bridge client id %.*s is not kept: no bridge "
				"with a persistent local session has that "
				"local_clientid now", (int)id_len - 1, id + 1);
			return;
		}
		id++;
		id_len--;
		/* A bridge's session does not expire: it is the broker's. */
	} else if (rsess_expired(b, rs, bd->now_wall, &left_ms)) {
		bd->dropped_expired++;
		return;
	}
	/* A bridge runs on shard (its index % shards), its session too. */
	struct shard *s = &b->shards[bridge >= 0
					     ? (unsigned)bridge % b->nshards
					     : hash_bytes(id, id_len) % b->nshards];
	struct session *ss = session_revive(s, rs->key, id, id_len,
					    rs->expiry_s);
	if (ss && bridge >= 0) {
		ss->of_bridge = true;
		b->bridge_recovered[bridge] = ss->id;
	}
	if (!ss || (bridge < 0 && session_register(b, ss) < 0)) {
		log_msg(KITE_LOG_ERR, "Persistence: out of memory restoring "
			"session %s", rs->client_id);
		if (ss)
			session_destroy(ss);
		return;
	}
	ss->protocol = rs->protocol;
	ss->next_pid = rs->last_pid;
	session_set_identity(ss, rs->listener, rs->username);
	for (struct rsub *r = rs->subs; r; r = r->next)
		if (session_add_sub(ss, r->filter, r->len, r->options, r->sub_id,
				    NULL) < 0)
			log_msg(KITE_LOG_ERR, "Persistence: session %s: "
				"subscription %.*s not restored", rs->client_id,
				(int)r->len, r->filter);
	for (struct rout *o = rs->out; o; o = o->next) {
		if (o->state != JOURNAL_WAIT_PUBCOMP &&
		    build_is_unreleased(bd, o->msg_id)) {
			bd->unreleased++;
			continue;
		}
		struct msg *m = o->state == JOURNAL_WAIT_PUBCOMP
					? NULL : build_msg(bd, o->msg_id, o->rm);
		if (!m && o->state != JOURNAL_WAIT_PUBCOMP)
			continue;
		uint8_t st = o->state == JOURNAL_WAIT_PUBACK ? INFLIGHT_WAIT_PUBACK
			     : o->state == JOURNAL_WAIT_PUBREC ? INFLIGHT_WAIT_PUBREC
			     : INFLIGHT_WAIT_PUBCOMP;
		if (session_restore_msg(ss, m, o->msg_id, &o->d, o->pid, st) == 0)
			bd->messages++;
	}
	for (struct rqos2 *q = rs->qos2; q; q = q->next) {
		struct msg *m = build_msg(bd, q->msg_id, NULL);
		if (m && session_qos2_add(ss, q->pid, msg_ref(m)) < 0)
			msg_unref(m);
	}
	build_will(bd, ss, rs);
	if (left_ms != UINT64_MAX) {
		ss->expire_at_ms = bd->now_mono + left_ms;
		session_timer_at(s, ss->expire_at_ms);
	}
	bd->sessions++;
}

/* Two sessions of one client id can both be in the files (a takeover
 * across shards that a stop interrupted): the newer (higher key) wins. */
static bool rsess_id_eq_cb(const struct htab_link *l, const void *key,
			   size_t len)
{
	const struct rsess *rs = htab_entry(l, const struct rsess, by_id);
	return rs->id_len == len && !memcmp(rs->client_id, key, len);
}

static void build_all(struct build *bd)
{
	struct recovery *rc = bd->rc;
	struct htab by_id = {0};
	build_collect_unreleased(bd);
	for (size_t i = 0; rc->sessions.bucket && i <= rc->sessions.mask; i++)
		for (struct htab_link *l = rc->sessions.bucket[i]; l; l = l->next) {
			struct rsess *rs = htab_entry(l, struct rsess, link);
			uint64_t h = hash_bytes(rs->client_id, rs->id_len);
			struct rsess *o = htab_entry(htab_find(&by_id, h, rs->client_id,
							       rs->id_len, rsess_id_eq_cb),
						     struct rsess, by_id);
			if (o && o->key > rs->key) {
				rs->superseded = true;
			} else {
				if (o) {
					o->superseded = true;
					htab_remove(&by_id, &o->by_id);
				}
				if (htab_insert(&by_id, &rs->by_id, h) < 0)
					rs->superseded = true; /* out of memory */
			}
		}
	for (size_t i = 0; rc->sessions.bucket && i <= rc->sessions.mask; i++)
		for (struct htab_link *l = rc->sessions.bucket[i]; l; l = l->next) {
			struct rsess *rs = htab_entry(l, struct rsess, link);
			if (rs->superseded)
				bd->dropped_dup++;
			else
				build_session(bd, rs);
		}
	htab_fini(&by_id, unlink_cb);
	htab_fini(&bd->held, held_id_free);
}

/* The retained store, built beside the sessions: it has a writer lock of
 * its own, and nothing else either side writes is shared (the tables
 * are only read now; messages' references are atomic). */
struct retained_build {
	struct broker *b;
	struct recovery *rc;
	uint32_t unresolved;
};

static void build_retained(struct retained_build *rb)
{
	struct recovery *rc = rb->rc;
	for (size_t i = 0; rc->retained.bucket && i <= rc->retained.mask; i++)
		for (struct htab_link *l = rc->retained.bucket[i]; l; l = l->next) {
			struct rretain *r = htab_entry(l, struct rretain, link);
			struct msg *m = build_msg_counted(rc, r->msg_id, r->rm,
							  &rb->unresolved);
			if (m && retain_set(rb->b->retained, r->topic, r->len,
					    msg_ref(m)) < 0)
				msg_unref(m);
		}
}

static void *build_retained_main(void *arg)
{
	rcu_register_thread();
	build_retained(arg);
	rcu_unregister_thread();
	return NULL;
}

/* Sessions on this thread, the retained store on another. */
static void build_everything(struct build *bd)
{
	struct retained_build rb = {.b = bd->b, .rc = bd->rc};
	pthread_t t;
	bool threaded = bd->rc->retained.count &&
			pthread_create(&t, NULL, build_retained_main, &rb) == 0;
	build_all(bd);
	if (threaded)
		pthread_join(t, NULL);
	else
		build_retained(&rb);
	bd->rc->unresolved += rb.unresolved;
}

/* An empty Mosquitto 2.0 database (format 6, a CFG chunk and nothing
 * else): what kite leaves at persistence_file when there was none, so
 * that deleting it resets kite as it resets Mosquitto, and Mosquitto
 * still starts on it. Written whole, synced, then renamed in place. */
static int persist_file_create(const char *path)
{
	static const uint8_t empty_db[] = {
		0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o',
		' ', 'd', 'b',		/* magic */
		0, 0, 0, 0,		/* CRC, unused */
		0, 0, 0, 6,		/* format version */
		0, 0, 0, 1, 0, 0, 0, 16, /* CFG chunk, 16 bytes */
		0, 0, 0, 0, 0, 0, 0, 0, /* last store id */
		1, 8, 0, 0, 0, 0, 0, 0, /* clean shutdown, 8-byte ids, padding */
	};
	char tmp[PERSIST_DIR_MAX];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || persist_write_all(fd, empty_db, sizeof(empty_db), 0) < 0 ||
	    fsync(fd) < 0 || rename(tmp, path) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot create %s: %s",
			path, strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		return -1;
	}
	close(fd);
	char dir[PERSIST_FILE_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	int dfd = open(slash ? (dir[0] ? dir : "/") : ".",
		       O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

/* kite's directory is persistence_file's name with ".kite": another
 * persistence_file is another state, as for Mosquitto. Before, it was
 * persistence_location/kite: such a directory is taken over (renamed)
 * once; *moved says so. */
static int persist_mkdir(const struct kite_config *cfg, bool *moved)
{
	const char *loc = cfg->persistence_location[0] ? cfg->persistence_location
						       : ".";
	char file[PERSIST_FILE_MAX];
	persist_file_path(cfg, file);
	snprintf(persist_dir, sizeof(persist_dir), "%s.kite", file);
	*moved = false;
	struct stat st;
	if (stat(persist_dir, &st) < 0 && errno == ENOENT) {
		char old[KITE_PATH_MAX + 8];
		snprintf(old, sizeof(old), "%s%skite", loc,
			 loc[strlen(loc) - 1] == '/' ? "" : "/");
		if (stat(old, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (rename(old, persist_dir) < 0) {
				log_msg(KITE_LOG_ERR, "Error: persistence: cannot "
					"rename %s to %s: %s", old, persist_dir,
					strerror(errno));
				return -1;
			}
			log_msg(KITE_LOG_NOTICE, "Persistence: %s (an earlier "
				"kite's) is now %s.", old, persist_dir);
			*moved = true;
		}
	}
	if (mkdir(persist_dir, 0700) < 0 && errno != EEXIST) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot create %s: %s "
			"(persistence_location %s)", persist_dir, strerror(errno), loc);
		return -1;
	}
	if (access(persist_dir, W_OK) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: %s is not writable: %s",
			persist_dir, strerror(errno));
		return -1;
	}
	/* One kite per directory: another one (other ports, same
	 * persistence_location) would rewrite the files under it. Held
	 * until exit; the kernel drops it when the process dies. */
	char lock[sizeof(persist_dir) + 8];
	snprintf(lock, sizeof(lock), "%s/lock", persist_dir);
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: %s is in use by another "
			"kite (%s)", persist_dir,
			fd < 0 ? strerror(errno) : "its lock is held");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return 0;
}

/* kite's logs stand for persistence_file: with the file gone (deleted to
 * start afresh, as Mosquitto's users do), they go too, before a new empty
 * file says the directory is current. In that order a crash between the
 * steps still starts afresh. */
static int persist_reset_if_file_gone(const struct kite_config *cfg,
				      bool moved, struct log_file *files,
				      size_t *nfiles, bool *created)
{
	char file[PERSIST_FILE_MAX];
	persist_file_path(cfg, file);
	*created = false;
	if (access(file, F_OK) == 0)
		return 0;
	if (*nfiles && !moved) {
		log_msg(KITE_LOG_NOTICE, "Persistence: %s is gone: starting "
			"afresh, the logs in %s are removed.", file, persist_dir);
		char path[sizeof(persist_dir) + 72];
		for (size_t i = 0; i < *nfiles; i++) {
			snprintf(path, sizeof(path), "%s/%s", persist_dir,
				 files[i].name);
			if (unlink(path) < 0 && errno != ENOENT) {
				log_msg(KITE_LOG_ERR, "Error: persistence: cannot "
					"remove %s: %s", path, strerror(errno));
				return -1;
			}
		}
		*nfiles = 0;
		persist_fsync_dir();
	}
	if (persist_file_create(file) < 0)
		return -1;
	*created = true;
	return 0;
}

/* The tables sized for what the files may hold (records are 30-100
 * bytes; a message's at least its topic and payload): growing them by
 * doubling moves every entry again, a cache miss each. A guess too high
 * costs only buckets, freed after recovery. */
static void recovery_reserve(struct recovery *rc, const struct log_file *files,
			     size_t n)
{
	uint64_t bytes = 0;
	char path[sizeof(persist_dir) + 72];
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", persist_dir, files[i].name);
		if (stat(path, &st) == 0)
			bytes += (uint64_t)st.st_size;
	}
	/* Out of memory here only means growing as before. */
	(void)htab_reserve(&rc->msgs, (size_t)(bytes / 128));
	(void)htab_reserve(&rc->outs, (size_t)(bytes / 256));
	(void)htab_reserve(&rc->retained, (size_t)(bytes / 256));
	(void)htab_reserve(&rc->sessions, (size_t)(bytes / 2048));
}

/* The names of the previous run's files, which go once the new
 * generation is durable (malloc'ed; NULL when out of memory). */
static char (*log_names(const struct log_file *files, size_t n))[PERSIST_NAME_MAX]
{
	char (*names)[PERSIST_NAME_MAX] = malloc((n ? n : 1) * sizeof(*names));
	for (size_t i = 0; names && i < n; i++)
		memcpy(names[i], files[i].name, PERSIST_NAME_MAX);
	return names;
}

/* Freeing the recovery tables (millions of cache-cold entries) is a
 * thread's work while the shards serve: they are recovery's own, and
 * its message references are atomic like every other. */
static pthread_t free_thread;
static bool free_running;

static void recovery_free_tables(struct recovery *rc)
{
	/* The queues' index first: the sessions free the entries. */
	htab_fini(&rc->outs, rout_unindex);
	htab_fini(&rc->sessions, rsess_free);
	htab_fini(&rc->msgs, rmsg_free);
	htab_fini(&rc->retained, rretain_free);
}

static void *recovery_free_main(void *arg)
{
	recovery_free_tables(arg);
	free(arg);
	persist_release_heap();
	return NULL;
}

static void recovery_free_later(struct recovery *rc)
{
	struct recovery *own = malloc(sizeof(*own));
	if (own) {
		*own = *rc;
		free_running = pthread_create(&free_thread, NULL,
					      recovery_free_main, own) == 0;
		if (!free_running)
			free(own);
	}
	if (!free_running) {
		recovery_free_tables(rc);
		persist_release_heap();
	}
	/* The thread's now: only the counts stay readable here. */
	rc->msgs = rc->sessions = rc->retained = rc->outs = (struct htab){0};
	rc->last_msg = NULL;
	rc->last_sess = NULL;
}

void recover_stop(void)
{
	if (free_running)
		pthread_join(free_thread, NULL);
	free_running = false;
}

static double ms_since_on(clockid_t clk, const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(clk, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 +
	       (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static double ms_since(const struct timespec *t0)
{
	return ms_since_on(CLOCK_MONOTONIC, t0);
}

int recover_start(struct broker *b)
{
	const struct kite_config *cfg = b->cfg;
	if (!cfg->persistence)
		return 0;
	/* The CPU time too: on a busy machine the wall time says little. */
	struct timespec t0, cpu0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu0);
	bool moved, created;
	if (persist_mkdir(cfg, &moved) < 0)
		return -1;
	struct log_file *files;
	size_t nfiles;
	uint64_t max_gen;
	if (list_logs(&files, &nfiles, &max_gen) < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: cannot list %s: %s",
			persist_dir, strerror(errno));
		return -1;
	}
	if (persist_reset_if_file_gone(cfg, moved, files, &nfiles, &created) < 0) {
		free(files);
		return -1;
	}
	struct recovery rc = {.now_wall = persist_wall_ms(),
			      .now_mono = (uint64_t)t0.tv_sec * 1000u +
					  (uint64_t)t0.tv_nsec / 1000000u};
	int rcode = 0;
	char path[sizeof(persist_dir) + 72];
	recovery_reserve(&rc, files, nfiles);
	for (size_t i = 0; i < nfiles && rcode == 0; i++) {
		snprintf(path, sizeof(path), "%s/%s", persist_dir, files[i].name);
		rcode = recover_file(&rc, path);
	}
	/* First start on a Mosquitto data directory: its database. */
	if (!nfiles && !created && rcode == 0)
		rcode = import_mosquitto(&rc, cfg);
	if (rcode == 0 && cfg->bridge_count &&
	    !(b->bridge_recovered = calloc(cfg->bridge_count,
					   sizeof(*b->bridge_recovered))))
		rcode = -1;
	if (rcode < 0) {
		log_msg(KITE_LOG_ERR, "Error: persistence: out of memory while "
			"recovering: not starting (nothing was changed on disk)");
		free(files);
		return -1;
	}
	double read_ms = ms_since(&t0);
	/* Main builds the shards' state before they run; the tries and
	 * the retained store want an RCU reader (writer) thread. */
	rcu_register_thread();
	struct build bd = {.b = b, .rc = &rc, .now_wall = rc.now_wall,
			   .now_mono = rc.now_mono};
	atomic_store(&b->next_session_id, rc.max_key);
	build_everything(&bd);
	double build_ms = ms_since(&t0) - read_ms;
	recovery_free_later(&rc);
	/* Over kite's own files, the new generation's snapshots are written
	 * while the shards serve: the old files hold the same state until
	 * they are durable. An import's data are nowhere else in kite's
	 * format: written before serving. So is a start after one whose
	 * background snapshot did not finish (two generations read):
	 * otherwise crash after crash would pile generations up, and every
	 * start would read the history, not the state. */
	bool background = nfiles > 0 && files[0].gen == files[nfiles - 1].gen;
	char (*old_names)[PERSIST_NAME_MAX] = log_names(files, nfiles);
	free(files);
	if (!old_names)
		rcode = -1;
	else if (background)
		persist_start_retire(old_names, nfiles, b->nshards); /* takes */
	for (unsigned i = 0; i < b->nshards && rcode == 0; i++) {
		b->shards[i].now_ms = bd.now_mono;
		rcode = persist_log_open(&b->shards[i], max_gen + 1, rc.max_msg,
					 background);
	}
	rcu_unregister_thread();
	if (rcode == 0) {
		persist_fsync_dir();
		/* The new generation is durable: the old files go. */
		if (!background)
			persist_remove_logs(old_names, nfiles);
	}
	if (!background)
		free(old_names);
	if (rcode < 0)
		return -1;
	double ms = ms_since(&t0);
	double cpu_ms = ms_since_on(CLOCK_THREAD_CPUTIME_ID, &cpu0);
	char every[48];
	snprintf(every, sizeof(every), "every %u ms",
		 (unsigned)cfg->persistence_sync_ms);
	log_msg(KITE_LOG_NOTICE, "Persistence: %s: %u records from %u files, "
		"%u sessions (%u expired, %u superseded), %u queued messages, "
		"%zu retained, in %.0f ms (reading %.0f, rebuilding %.0f; "
		"CPU %.0f ms); syncing %s.", persist_dir, rc.records,
		rc.files, bd.sessions, bd.dropped_expired, bd.dropped_dup,
		bd.messages, retain_count(b->retained), ms, read_ms, build_ms,
		cpu_ms,
		cfg->persistence_sync_ms == KITE_PERSISTENCE_SYNC_ALWAYS
			? "before every acknowledgement"
		: cfg->persistence_sync_ms == KITE_PERSISTENCE_SYNC_NEVER
			? "never (the kernel writes back)"
			: every);
	return 0;
}
