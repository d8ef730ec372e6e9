/* `kite db`: what a persistence directory holds, without starting a broker
 * (see kitedb.h). Reads kite's logs with core/journal and Mosquitto's
 * database with core/mosqdb; nothing is written. */
#include "tools/kitedb.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/hash.h"
#include "core/htab.h"
#include "core/journal.h"
#include "tools/mosqdb_dump.h"

static const char *const type_names[] = {
	[JOURNAL_SESSION] = "session",	 [JOURNAL_SESSION_END] = "session_end",
	[JOURNAL_SUB] = "sub",		 [JOURNAL_UNSUB] = "unsub",
	[JOURNAL_MSG] = "msg",		 [JOURNAL_QUEUE] = "queue",
	[JOURNAL_OUT] = "out",		 [JOURNAL_DONE] = "done",
	[JOURNAL_QOS2_IN] = "qos2_in",	 [JOURNAL_QOS2_REL] = "qos2_rel",
	[JOURNAL_RETAIN] = "retain",	 [JOURNAL_WILL] = "will",
	[JOURNAL_SNAPSHOT_END] = "snapshot_end",
	[JOURNAL_SENT] = "sent",	 [JOURNAL_ACKS] = "acks",
};
_Static_assert(sizeof(type_names) / sizeof(type_names[0]) ==
		       JOURNAL_TYPE_MAX + 1, "a name for every record type");

/* What the records add up to: live sessions and their queues, retained
 * topics, and references to things no record introduced. */
struct key_entry {
	struct htab_link link;
	uint64_t key;
	int64_t queued; /* QUEUE and SENT minus DONE and ACKS entries */
	uint32_t subs;
};

struct topic_entry {
	struct htab_link link;
	uint16_t len;
	char topic[];
};

struct tally {
	uint64_t records[JOURNAL_TYPE_MAX + 1];
	uint64_t bytes, skipped, skipped_bytes, torn_bytes;
	uint32_t files, bad_files, torn_files;
	struct htab sessions, msgs, retained;
	uint64_t dangling; /* records about no known session or message */
};

static bool key_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	(void)len;
	return htab_entry(l, const struct key_entry, link)->key ==
	       *(const uint64_t *)key;
}

static bool topic_eq_cb(const struct htab_link *l, const void *key, size_t len)
{
	const struct topic_entry *t = htab_entry(l, const struct topic_entry, link);
	return t->len == len && !memcmp(t->topic, key, len);
}

static struct key_entry *key_get(struct htab *h, uint64_t key, bool add)
{
	uint64_t hv = hash_bytes(&key, sizeof(key));
	struct key_entry *e = htab_entry(htab_find(h, hv, &key, 8, key_eq_cb),
					 struct key_entry, link);
	if (e || !add)
		return e;
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	e->key = key;
	if (htab_insert(h, &e->link, hv) < 0) {
		free(e);
		return NULL;
	}
	return e;
}

static void key_drop(struct htab *h, uint64_t key)
{
	struct key_entry *e = key_get(h, key, false);
	if (e) {
		htab_remove(h, &e->link);
		free(e);
	}
}

static void retained_set(struct htab *h, struct journal_bytes t, bool set)
{
	uint64_t hv = hash_bytes(t.ptr, t.len);
	struct topic_entry *e = htab_entry(htab_find(h, hv, t.ptr, t.len, topic_eq_cb),
					   struct topic_entry, link);
	if (!set) {
		if (e) {
			htab_remove(h, &e->link);
			free(e);
		}
		return;
	}
	if (e || !(e = malloc(sizeof(*e) + t.len)))
		return;
	e->len = (uint16_t)t.len;
	memcpy(e->topic, t.ptr, t.len);
	if (htab_insert(h, &e->link, hv) < 0)
		free(e);
}

static uint64_t record_key(const struct journal_record *r)
{
	switch (r->type) {
	case JOURNAL_SUB: return r->sub.key;
	case JOURNAL_UNSUB: return r->unsub.key;
	case JOURNAL_QUEUE: return r->queue.key;
	case JOURNAL_OUT: return r->out.key;
	case JOURNAL_DONE: return r->done.key;
	case JOURNAL_QOS2_IN: return r->qos2_in.key;
	case JOURNAL_QOS2_REL: return r->qos2_rel.key;
	case JOURNAL_WILL: return r->will.key;
	default: return 0;
	}
}

static void tally_record(struct tally *t, const struct journal_record *r)
{
	t->records[r->type]++;
	switch (r->type) {
	case JOURNAL_SESSION:
		key_get(&t->sessions, r->session.key, true);
		return;
	case JOURNAL_SESSION_END:
		key_drop(&t->sessions, r->session_end.key);
		return;
	case JOURNAL_MSG:
		key_get(&t->msgs, r->msg.id, true);
		return;
	case JOURNAL_RETAIN:
		retained_set(&t->retained, r->retain.topic, r->retain.msg_id != 0);
		if (r->retain.msg_id && !key_get(&t->msgs, r->retain.msg_id, false))
			t->dangling++;
		return;
	case JOURNAL_SNAPSHOT_END:
		return;
	case JOURNAL_SENT: {
		bool known = key_get(&t->msgs, r->sent.msg_id, false);
		struct journal_bytes list = r->sent.list;
		uint64_t key = 0;
		struct journal_sent e;
		while (journal_sent_next(&list, &key, &e)) {
			struct key_entry *s = key_get(&t->sessions, e.key, false);
			if (s)
				s->queued++;
			if (!s || !known)
				t->dangling++;
		}
		return;
	}
	case JOURNAL_ACKS: {
		struct journal_bytes list = r->acks.list;
		struct journal_ack a = {0};
		while (journal_ack_next(&list, &a)) {
			struct key_entry *s = key_get(&t->sessions, a.key, false);
			if (s)
				s->queued--;
			else
				t->dangling++;
		}
		return;
	}
	}
	struct key_entry *s = key_get(&t->sessions, record_key(r), false);
	if (!s) {
		/* Before a snapshot restates its session: normal in a log
		 * compacted while serving; counted, not an error. */
		t->dangling++;
		return;
	}
	if (r->type == JOURNAL_QUEUE) {
		s->queued++;
		if (!key_get(&t->msgs, r->queue.msg_id, false))
			t->dangling++;
	} else if (r->type == JOURNAL_DONE) {
		s->queued--;
	} else if (r->type == JOURNAL_SUB) {
		s->subs++;
	} else if (r->type == JOURNAL_UNSUB && s->subs) {
		s->subs--;
	}
}

static int tally_file(struct tally *t, const char *path, bool verbose)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	if (!f || fstat(fileno(f), &st) < 0) {
		printf("%s: cannot read: %s\n", path, strerror(errno));
		if (f)
			fclose(f);
		t->bad_files++;
		return -1;
	}
	size_t len = (size_t)st.st_size;
	uint8_t *buf = malloc(len ? len : 1);
	if (!buf || fread(buf, 1, len, f) != len) {
		printf("%s: cannot read: %s\n", path, buf ? strerror(errno) : "out of memory");
		free(buf);
		fclose(f);
		t->bad_files++;
		return -1;
	}
	fclose(f);
	uint32_t shard;
	uint64_t gen;
	const char *why;
	if (journal_header_check(buf, len, &shard, &gen, &why) < 0) {
		printf("%s: not read: %s\n", path, why);
		free(buf);
		t->bad_files++;
		return -1;
	}
	struct journal_reader rd;
	journal_reader_init(&rd, buf + JOURNAL_HEADER_LEN, len - JOURNAL_HEADER_LEN);
	struct journal_record r;
	uint64_t n = 0;
	while (journal_next(&rd, &r) == 1) {
		tally_record(t, &r);
		n++;
	}
	t->files++;
	t->bytes += len;
	t->skipped += rd.skipped;
	t->skipped_bytes += rd.skipped_bytes;
	if (rd.torn) {
		t->torn_files++;
		t->torn_bytes += rd.torn_bytes;
	}
	if (verbose || rd.skipped || rd.torn)
		printf("%s: shard %u, generation %llu, %zu bytes, %llu records%s%s\n",
		       path, shard, (unsigned long long)gen, len,
		       (unsigned long long)n, rd.skipped ? ", damaged records skipped" : "",
		       rd.torn ? ", torn tail (a write a stop cut short)" : "");
	if (rd.torn)
		printf("  torn tail: %zu bytes at offset %zu\n", rd.torn_bytes,
		       rd.torn_at + JOURNAL_HEADER_LEN);
	if (rd.skipped)
		printf("  %u records (%llu bytes) fail their checksum\n", rd.skipped,
		       (unsigned long long)rd.skipped_bytes);
	free(buf);
	return 0;
}

static void free_cb(struct htab_link *l)
{
	free(l); /* both entry types start with their link */
}

/* "shard-S.G.log": by generation, then shard, as recovery reads them. */
static int cmp_names(const void *a, const void *b)
{
	unsigned sa = 0, sb = 0;
	unsigned long long ga = 0, gb = 0;
	sscanf(*(char *const *)a, "shard-%u.%llu", &sa, &ga);
	sscanf(*(char *const *)b, "shard-%u.%llu", &sb, &gb);
	if (ga != gb)
		return ga < gb ? -1 : 1;
	return sa < sb ? -1 : sa > sb;
}

/* kite's logs in dir/kite, in recovery's order (generation, then shard). */
static int list_logs(const char *dir, char ***names, size_t *n)
{
	DIR *d = opendir(dir);
	*names = NULL;
	*n = 0;
	if (!d)
		return -1;
	struct dirent *de;
	while ((de = readdir(d))) {
		unsigned s;
		unsigned long long g;
		char tail[8];
		if (sscanf(de->d_name, "shard-%u.%llu.%7s", &s, &g, tail) != 3 ||
		    strcmp(tail, "log"))
			continue;
		char **nn = realloc(*names, sizeof(*nn) * (*n + 1));
		if (!nn)
			break;
		*names = nn;
		(*names)[(*n)++] = strdup(de->d_name);
	}
	closedir(d);
	if (*n)
		qsort(*names, *n, sizeof(**names), cmp_names);
	return 0;
}

static int db_show(const char *location, bool verbose)
{
	/* DIR is kite's own directory (persistence_file's name with
	 * ".kite"), or persistence_location holding the default one (or an
	 * earlier kite's DIR/kite). */
	char dir[4096];
	size_t ll = strlen(location);
	const char *sep = location[ll - 1] == '/' ? "" : "/";
	struct stat st;
	if (ll > 5 && !strcmp(location + ll - 5, ".kite"))
		snprintf(dir, sizeof(dir), "%s", location);
	else if (snprintf(dir, sizeof(dir), "%s%smosquitto.db.kite", location, sep),
		 stat(dir, &st) < 0)
		snprintf(dir, sizeof(dir), "%s%skite", location, sep);
	char **names;
	size_t n;
	if (list_logs(dir, &names, &n) < 0) {
		printf("%s: %s (no kite persistence here yet)\n", dir, strerror(errno));
		return 1;
	}
	struct tally t = {0};
	for (size_t i = 0; i < n; i++) {
		char path[sizeof(dir) + 300];
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		tally_file(&t, path, verbose);
		free(names[i]);
	}
	free(names);
	int64_t queued = 0;
	uint64_t subs = 0;
	for (size_t i = 0; t.sessions.bucket && i <= t.sessions.mask; i++)
		for (struct htab_link *l = t.sessions.bucket[i]; l; l = l->next) {
			const struct key_entry *e = htab_entry(l, const struct key_entry, link);
			queued += e->queued > 0 ? e->queued : 0;
			subs += e->subs;
		}
	printf("%s: %u log files, %llu bytes\n", dir, t.files, (unsigned long long)t.bytes);
	printf("  sessions %zu, subscriptions %llu, queued or in flight %lld, "
	       "retained %zu, messages stored %zu\n", t.sessions.count,
	       (unsigned long long)subs, (long long)queued, t.retained.count,
	       t.msgs.count);
	printf("  records:");
	for (unsigned i = 1; i <= JOURNAL_TYPE_MAX; i++)
		if (t.records[i])
			printf(" %s %llu", type_names[i], (unsigned long long)t.records[i]);
	printf("\n  damage: %u unreadable files, %u torn tails (%llu bytes), %llu "
	       "records failing their checksum (%llu bytes); %llu records about "
	       "sessions or messages not (yet) introduced\n", t.bad_files,
	       t.torn_files, (unsigned long long)t.torn_bytes,
	       (unsigned long long)t.skipped, (unsigned long long)t.skipped_bytes,
	       (unsigned long long)t.dangling);
	htab_fini(&t.sessions, free_cb);
	htab_fini(&t.msgs, free_cb);
	htab_fini(&t.retained, free_cb);
	bool damaged = t.bad_files || t.skipped;
	printf("  check: %s\n", damaged ? "DAMAGED (kite starts with what it can read)"
				       : t.torn_files ? "ok, with a torn tail kite will cut"
						      : "ok");
	return damaged ? 1 : 0;
}

static void db_usage(FILE *out)
{
	fprintf(out,
		"Usage: kite db [show|check] [-v] DIR   what kite's directory DIR\n"
		"                                        (persistence_file.kite) holds;\n"
		"                                        or DIR/mosquitto.db.kite\n"
		"       kite db dump FILE               a Mosquitto mosquitto.db as text\n"
		"Reads only. `check` exits 1 when records are damaged or files\n"
		"unreadable (kite would start with what it can read).\n");
}

int kitedb_main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		db_usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "dump"))
		return mosqdb_dump_main(argc - 1, argv + 1);
	int i = 1;
	if (!strcmp(argv[i], "show") || !strcmp(argv[i], "check"))
		i++;
	bool verbose = i < argc && !strcmp(argv[i], "-v");
	if (verbose)
		i++;
	if (i != argc - 1) {
		db_usage(stderr);
		return 2;
	}
	return db_show(argv[i], verbose);
}
