/* The persistence log's format (docs/PERSISTENCE.md): a file header, then
 * length-prefixed, CRC32C-checked records. Bytes in, bytes out: the
 * broker (io/persist.c) decides what to write and when, and what a record
 * means on replay. Readers never trust a length: a torn tail is reported
 * and cut, a record that fails its checksum is skipped. */
#ifndef KITE_JOURNAL_H
#define KITE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JOURNAL_MAGIC "KITELOG"
/* Version 2 added SENT and ACKS; a version 1 log (no such records) reads
 * the same, so both are accepted. An older kite refuses a version 2 file
 * as a whole rather than skip its new records one by one as damage. */
#define JOURNAL_VERSION 2u
#define JOURNAL_VERSION_MIN 1u
#define JOURNAL_HEADER_LEN 24u /* magic 8, version 4, shard 4, generation 8 */
/* Framing: u32 length (of type and body), u32 CRC32C (of the same). */
#define JOURNAL_FRAME_LEN 8u
/* A record larger than this is damage, not data: a PUBLISH is at most
 * 256 MiB, plus its topic and properties. */
#define JOURNAL_RECORD_MAX ((1u << 28) + (1u << 20))
#define JOURNAL_SUBIDS_MAX 4
/* An ACKS record lists at most this many finished deliveries, each at
 * most JOURNAL_ACK_LEN_MAX bytes (two varints). */
#define JOURNAL_ACKS_MAX 256u
#define JOURNAL_ACK_LEN_MAX 20u
/* A SENT record lists at most this many deliveries of its message, each
 * at most JOURNAL_SENT_LEN_MAX bytes. */
#define JOURNAL_SENT_MAX 4096u
#define JOURNAL_SENT_LEN_MAX (10u + 1 + 2 + 5 * JOURNAL_SUBIDS_MAX)

enum journal_type {
	JOURNAL_SESSION = 1, /* a persistent session, created or changed */
	JOURNAL_SESSION_END,
	JOURNAL_SUB,
	JOURNAL_UNSUB,
	JOURNAL_MSG,	  /* a message, before records that refer to it */
	JOURNAL_QUEUE,	  /* message queued (version 1: or sent) to a session */
	JOURNAL_OUT,	  /* outgoing QoS 1/2: packet id and state */
	JOURNAL_DONE,	  /* outgoing message finished or dropped (version 1;
			   * version 2 writes ACKS) */
	JOURNAL_QOS2_IN,  /* incoming QoS 2 held until PUBREL */
	JOURNAL_QOS2_REL, /* ... released */
	JOURNAL_RETAIN,	  /* a topic's retained message (shard 0) */
	JOURNAL_WILL,	  /* a session's pending delayed will */
	JOURNAL_SNAPSHOT_END, /* everything before it restates the state */
	/* Version 2: the common path of a delivery in list entries of two
	 * records instead of QUEUE, OUT and DONE (about 8 bytes, not 81). */
	JOURNAL_SENT, /* QUEUE and OUT in one, for a list of sessions */
	JOURNAL_ACKS, /* DONE for a list of (session, message) */
	JOURNAL_TYPE_MAX = JOURNAL_ACKS,
};

/* Bytes inside a record being read (pointer into the caller's buffer). */
struct journal_bytes {
	const uint8_t *ptr;
	uint32_t len;
};

enum journal_out_state {
	JOURNAL_WAIT_PUBACK = 1,
	JOURNAL_WAIT_PUBREC,
	JOURNAL_WAIT_PUBCOMP,
};

struct journal_record {
	uint8_t type; /* enum journal_type */
	union {
		struct {
			uint64_t key;
			uint32_t expiry_s;    /* UINT32_MAX: never */
			uint64_t offline_wall_ms; /* since when; 0: connected */
			uint8_t protocol;     /* 3, 4 or 5 */
			uint8_t listener;
			bool has_username;
			struct journal_bytes client_id, username;
			/* The last outgoing packet id used, so that a restart
			 * goes on from it as Mosquitto does; last in the body
			 * and optional: absent when 0 (none yet), as in older
			 * logs; a present 0 is a damaged record. */
			uint16_t last_pid;
		} session;
		struct {
			uint64_t key;
		} session_end;
		struct {
			uint64_t key;
			uint8_t options; /* QoS and MQTT 5 option bits */
			uint32_t sub_id;
			struct journal_bytes filter;
		} sub;
		struct {
			uint64_t key;
			struct journal_bytes filter;
		} unsub;
		struct {
			uint64_t id;
			uint8_t qos;
			bool retain;
			uint32_t expiry_s;     /* 0: none */
			uint64_t created_wall_ms; /* expiry counts from here */
			struct journal_bytes topic, payload, props;
		} msg;
		struct {
			uint64_t key, msg_id;
			uint8_t qos;
			bool retain;
			uint8_t nsub;
			uint32_t sub[JOURNAL_SUBIDS_MAX];
		} queue;
		struct {
			uint64_t key, msg_id;
			uint16_t pid;
			uint8_t state; /* enum journal_out_state */
		} out;
		struct {
			uint64_t key, msg_id;
		} done;
		struct {
			uint64_t key, msg_id;
			uint16_t pid;
		} qos2_in;
		struct {
			uint64_t key;
			uint16_t pid;
		} qos2_rel;
		struct {
			uint64_t msg_id; /* 0: the topic has none any more */
			uint64_t seq;	 /* orders changes of one topic */
			struct journal_bytes topic;
			/* Who published it, for check_retain_source across a
			 * restart (Mosquitto's database keeps it too); last in
			 * the body and optional: absent in older logs. */
			bool has_source;
			uint8_t source_listener;
			bool source_has_username;
			struct journal_bytes source_client_id, source_username;
		} retain;
		struct {
			uint64_t key, msg_id;
			uint64_t at_wall_ms; /* when it is due */
		} will;
		/* One message sent at once to n sessions (1..
		 * JOURNAL_SENT_MAX), each delivery waiting for its first
		 * acknowledgement: PUBACK (QoS 1) or PUBREC (QoS 2). The
		 * list is read with journal_sent_next, written with
		 * journal_sent_encode. */
		struct {
			uint64_t msg_id;
			uint32_t n;
			struct journal_bytes list;
		} sent;
		/* n entries (1..JOURNAL_ACKS_MAX), each as DONE; the list
		 * is read with journal_ack_next, written with
		 * journal_ack_encode. */
		struct {
			uint32_t n;
			struct journal_bytes list;
		} acks;
	};
};

/* ---- writing ------------------------------------------------------------ */

/* A growable buffer records are appended to. */
struct journal_buf {
	uint8_t *data;
	size_t len, cap;
};

void journal_buf_free(struct journal_buf *b);
/* The 24-byte file header. */
void journal_header(uint8_t out[JOURNAL_HEADER_LEN], uint32_t shard,
		    uint64_t generation);
/* Appends one framed record. 0, or -1 when out of memory (b unchanged). */
int journal_put(struct journal_buf *b, const struct journal_record *r);

/* An ACKS list entry is (session key, message id), each a zigzag varint
 * of its difference from the entry before (from 0 for the first): the
 * acks of one turn are mostly many sessions' for the same message, so an
 * entry is about 3 bytes. `prev` starts zeroed and follows the list. */
struct journal_ack {
	uint64_t key, msg_id;
};
/* Writes one entry (at most JOURNAL_ACK_LEN_MAX bytes) at out; its
 * length. */
size_t journal_ack_encode(uint8_t *out, struct journal_ack *prev,
			  uint64_t key, uint64_t msg_id);

/* A SENT list entry: the session (a zigzag varint of its key's
 * difference from the entry before, from 0 for the first), a flags byte
 * (QoS, retain, the number of subscription ids), the packet id (u16),
 * the subscription ids (varints): about 5 bytes a delivery. */
struct journal_sent {
	uint64_t key;
	uint8_t qos; /* 1 or 2 */
	bool retain;
	uint8_t nsub;
	uint16_t pid;
	uint32_t sub[JOURNAL_SUBIDS_MAX];
};
/* Writes one entry (at most JOURNAL_SENT_LEN_MAX bytes) at out; its
 * length. *prev_key starts at 0 and follows the list. */
size_t journal_sent_encode(uint8_t *out, uint64_t *prev_key,
			   const struct journal_sent *e);

/* ---- reading ------------------------------------------------------------ */

/* Checks a file header: 0, or -1 with *why set. */
int journal_header_check(const uint8_t *buf, size_t len, uint32_t *shard,
			 uint64_t *generation, const char **why);

struct journal_reader {
	const uint8_t *buf;
	size_t len, pos;
	/* What was wrong, for the log: records that failed their checksum
	 * or did not parse (skipped), and a torn tail (cut). */
	uint32_t skipped;
	uint64_t skipped_bytes;
	bool torn;
	size_t torn_at, torn_bytes;
};

/* Starts reading records at buf (after the header). */
void journal_reader_init(struct journal_reader *rd, const uint8_t *buf,
			 size_t len);
/* The next good record: 1, or 0 at the end (a torn tail ends it too).
 * Pointers in *r point into the reader's buffer. */
int journal_next(struct journal_reader *rd, struct journal_record *r);

/* The next entry of a decoded ACKS list (into *prev); false at its end.
 * `list` is consumed. The decoder checked every entry already. */
bool journal_ack_next(struct journal_bytes *list, struct journal_ack *prev);

/* The next entry of a decoded SENT list; false at its end. */
bool journal_sent_next(struct journal_bytes *list, uint64_t *prev_key,
		       struct journal_sent *e);

/* Decodes one record's type and body (no framing); false if it does not
 * parse. Exposed for the fuzzer. */
bool journal_decode(const uint8_t *p, size_t len, struct journal_record *r);

#endif
