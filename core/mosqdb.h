/* Reader for Mosquitto's persistence file (mosquitto.db), so kite can take
 * over what Mosquitto 1.6 and 2.0 kept: retained messages, sessions, their
 * subscriptions and queued messages.
 *
 * Bytes in, callbacks out: mosqdb_read walks a whole file image held in
 * memory and hands every item to a visitor, in file order. Nothing is
 * allocated; every struct mqtt_bytes points into the caller's buffer.
 * Every length the file announces is compared with the bytes that are
 * really there before it is used, so no file can make the reader read out
 * of bounds, assert or allocate.
 *
 * The format (Mosquitto's src/persist*.c): a 23-byte header (15-byte
 * magic "\0\xB5\0mosquitto db", a CRC field Mosquitto always writes as 0,
 * the format version, big-endian), then chunks of {type, length} (both
 * big-endian uint32) and `length` bytes. Mosquitto writes each chunk's
 * fixed part as a raw C struct: lengths, ports and mids big-endian, but
 * store ids and times in the writer's byte order, read here as
 * little-endian (x86, ARM, RISC-V; a file from a big-endian machine shows
 * absurd ids and times). Struct padding is skipped; files from 32-bit x86,
 * whose CFG and CLIENT fixed parts are 4 bytes shorter, are read too.
 *
 * Versions: 6 (Mosquitto 1.6.12 and later, 2.0) and 5 (Mosquitto 1.6.0 to
 * 1.6.11: its CLIENT chunks carry no username or listener port). 2 to 4
 * (Mosquitto 1.5 and older) and any other version are refused with
 * MOSQDB_UNSUPPORTED.
 *
 * What each outcome means for the caller:
 * - MOSQDB_OK: every chunk was complete and consistent. A file cut exactly
 *   between two chunks cannot be told from a complete one (the format has
 *   no count or end marker); it reads as OK with the chunks before the cut.
 * - MOSQDB_TRUNCATED: the file ends inside its header or inside a chunk
 *   (or is empty: Mosquitto starts afresh on an empty file). Every
 *   complete chunk before the cut was given to the visitor;
 *   st->offset says where the last one ended.
 * - MOSQDB_NOT_MOSQDB / MOSQDB_UNSUPPORTED: refused before any chunk.
 * - MOSQDB_CORRUPT: a chunk contradicts itself (a field overruns the
 *   chunk, bytes left over, a QoS of 3, an invalid topic, a property block
 *   that is not valid for a PUBLISH...). The chunks before it were given
 *   to the visitor.
 * - MOSQDB_STOPPED: a callback returned non-zero (st->cb_rc).
 * The visitor sees chunks as they are read; a caller that wants all or
 * nothing runs mosqdb_read once with a NULL visitor (it only validates,
 * in one linear pass) before reading for real.
 *
 * Values the reader guarantees, so an importer need not check them again:
 * QoS <= 2; client ids and topics are valid MQTT UTF-8 (topic names valid
 * names, subscription topics valid filters); property blocks are valid
 * for a server's PUBLISH (mqtt_props_decode); subscription identifiers
 * <= MQTT_VARINT_MAX; store ids non-zero; direction and state in range.
 * What it does not judge: whether a store id referred to exists (Mosquitto
 * skips such references as expired messages), times, usernames and
 * source ids (any bytes), unknown chunk types (skipped, as Mosquitto does,
 * and shown to unknown_cb). */
#ifndef KITE_MOSQDB_H
#define KITE_MOSQDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

enum mosqdb_rc {
	MOSQDB_OK = 0,
	MOSQDB_NOT_MOSQDB = -1,	 /* no Mosquitto magic at the start */
	MOSQDB_UNSUPPORTED = -2, /* a format version or id size not known */
	MOSQDB_TRUNCATED = -3,	 /* ends inside the header or a chunk */
	MOSQDB_CORRUPT = -4,	 /* a chunk contradicts itself */
	MOSQDB_STOPPED = -5,	 /* a callback returned non-zero */
};

/* Chunk types, as Mosquitto numbers them. */
enum mosqdb_chunk {
	MOSQDB_CHUNK_CFG = 1,
	MOSQDB_CHUNK_MSG_STORE = 2,
	MOSQDB_CHUNK_CLIENT_MSG = 3,
	MOSQDB_CHUNK_RETAIN = 4,
	MOSQDB_CHUNK_SUB = 5,
	MOSQDB_CHUNK_CLIENT = 6,
};

/* Bytes before the first chunk: magic, CRC, version. */
#define MOSQDB_HEADER_LEN 23u
#define MOSQDB_CHUNK_HEADER_LEN 8u

struct mosqdb_header {
	uint32_t version; /* 5 or 6 */
	uint32_t crc;	  /* as stored; Mosquitto never computes it (0) */
};

/* `offset` in every item below is where its chunk header starts. */

/* DB_CHUNK_CFG: Mosquitto writes one, first. */
struct mosqdb_cfg {
	size_t offset;
	uint64_t last_db_id; /* the highest store id Mosquitto handed out */
	bool shutdown;	     /* written at a clean stop (not an autosave) */
};

/* DB_CHUNK_MSG_STORE: one message, referred to by store_id from RETAIN
 * and CLIENT_MSG chunks. */
struct mosqdb_msg {
	size_t offset;
	uint64_t store_id;
	int64_t expiry_time; /* Unix seconds it expires at; <= 0: never (the
				MQTT 5 message expiry interval is kept here,
				not in props) */
	struct mqtt_bytes topic;
	struct mqtt_bytes payload;
	struct mqtt_bytes source_id;	   /* the publisher; empty if none */
	struct mqtt_bytes source_username; /* empty if none */
	uint16_t source_port;		   /* its listener's port; 0 if none */
	uint16_t source_mid;		   /* its packet id */
	uint8_t qos;
	bool retain;
	/* MQTT 5 properties (decoded as a PUBLISH's; props.raw is the block
	 * without its length, empty when the message has none). */
	struct mqtt_props props;
};

/* DB_CHUNK_RETAIN: the message store_id is retained on its topic. */
struct mosqdb_retain {
	size_t offset;
	uint64_t store_id;
};

/* DB_CHUNK_CLIENT: a session that outlives its connection. */
struct mosqdb_client {
	size_t offset;
	struct mqtt_bytes client_id;
	/* Version 6 only, else empty. Any bytes: Mosquitto 2.0.11 writes a
	 * client without a username after one with a username with the
	 * previous length (byte-swapped on every other such client) and the
	 * heap bytes that follow that username. Mosquitto restores the part
	 * before the first NUL. */
	struct mqtt_bytes username;
	int64_t session_expiry_time;	  /* Unix seconds; 0 if not set */
	uint32_t session_expiry_interval; /* seconds; UINT32_MAX: never
					     (3.1.1 clean session 0) */
	uint16_t last_mid;
	uint16_t listener_port; /* version 6 only, else 0; 0 if none */
};

/* DB_CHUNK_SUB: one subscription of a session (shared subscriptions are
 * not in the file: Mosquitto does not save them). */
struct mosqdb_sub {
	size_t offset;
	struct mqtt_bytes client_id;
	struct mqtt_bytes filter;
	uint32_t identifier; /* MQTT 5 subscription identifier; 0 if none */
	uint8_t qos;
	bool no_local;
	bool retain_as_published;
	uint8_t options; /* as stored: no_local << 2 | retain_as_published << 3
			    (retain handling is not saved) */
};

enum mosqdb_direction {
	MOSQDB_DIR_IN = 0,  /* from the client: QoS 2 awaiting PUBREL */
	MOSQDB_DIR_OUT = 1, /* to the client */
};

/* Mosquitto's enum mosquitto_msg_state: where a client message stands. */
enum mosqdb_state {
	MOSQDB_STATE_INVALID = 0,
	MOSQDB_STATE_PUBLISH_QOS0 = 1,
	MOSQDB_STATE_PUBLISH_QOS1 = 2,
	MOSQDB_STATE_WAIT_FOR_PUBACK = 3,
	MOSQDB_STATE_PUBLISH_QOS2 = 4,
	MOSQDB_STATE_WAIT_FOR_PUBREC = 5,
	MOSQDB_STATE_RESEND_PUBREL = 6,
	MOSQDB_STATE_WAIT_FOR_PUBREL = 7,
	MOSQDB_STATE_RESEND_PUBCOMP = 8,
	MOSQDB_STATE_WAIT_FOR_PUBCOMP = 9,
	MOSQDB_STATE_SEND_PUBREC = 10,
	MOSQDB_STATE_QUEUED = 11,
};

/* DB_CHUNK_CLIENT_MSG: a message in a session's queue or in flight.
 * Mosquitto writes a client's messages right after its CLIENT chunk:
 * incoming in flight, incoming queued, outgoing in flight, outgoing
 * queued, each in order. */
struct mosqdb_client_msg {
	size_t offset;
	struct mqtt_bytes client_id;
	uint64_t store_id;
	uint16_t mid; /* packet id; 0 for QoS 0 */
	uint8_t qos;  /* as delivered: the subscription may lower it */
	bool retain;
	bool dup;
	uint8_t direction; /* enum mosqdb_direction */
	uint8_t state;	   /* enum mosqdb_state */
	/* Mosquitto keeps the subscription identifier of the matching
	 * subscription here (one per message: it queues a copy per
	 * subscription); props.subscription_identifier is it, 0 if none. */
	struct mqtt_props props;
};

/* A chunk of a type this reader does not know: skipped. */
struct mosqdb_unknown {
	size_t offset;
	uint32_t type;
	uint32_t length;
};

/* Every callback may be NULL (the chunk is then only validated). Return 0
 * to go on; anything else stops the read with MOSQDB_STOPPED and is kept
 * in st->cb_rc. Items are only valid during the call, but what they
 * point to lives as long as the caller's buffer. */
struct mosqdb_visitor {
	int (*header_cb)(void *ctx, const struct mosqdb_header *h);
	int (*cfg_cb)(void *ctx, const struct mosqdb_cfg *c);
	int (*msg_cb)(void *ctx, const struct mosqdb_msg *m);
	int (*retain_cb)(void *ctx, const struct mosqdb_retain *r);
	int (*client_cb)(void *ctx, const struct mosqdb_client *c);
	int (*sub_cb)(void *ctx, const struct mosqdb_sub *s);
	int (*client_msg_cb)(void *ctx, const struct mosqdb_client_msg *m);
	int (*unknown_cb)(void *ctx, const struct mosqdb_unknown *u);
};

struct mosqdb_status {
	/* How far the file was read completely: the end of the header and
	 * of every chunk the visitor accepted (len when OK). */
	size_t offset;
	uint32_t chunks;  /* complete chunks read, unknown ones included */
	uint32_t version; /* the file's format version; 0 before it is read */
	int cb_rc;	  /* the callback's value, for MOSQDB_STOPPED */
	/* "" when OK; else the reason with the offset it was found at, the
	 * chunk (type, where it starts, its length) and what is wrong, e.g.
	 * "offset 1187: MSG_STORE chunk at 1150 (54 bytes): topic of 70 bytes
	 * overruns the chunk (21 left)". The caller adds the path. */
	char err[256];
};

/* Reads buf[0..len) as a mosquitto.db. v may be NULL (validate only); st
 * must not be. Returns an enum mosqdb_rc. */
int mosqdb_read(const uint8_t *buf, size_t len, const struct mosqdb_visitor *v,
		void *ctx, struct mosqdb_status *st);

/* "CFG", "MSG_STORE", ...; "unknown" for other types. */
const char *mosqdb_chunk_name(uint32_t type);
/* "queued", "wait_for_pubrel", ...; "unknown" out of range. */
const char *mosqdb_state_name(uint8_t state);
/* "ok", "not a mosquitto.db", "unsupported", ... */
const char *mosqdb_rc_name(int rc);

#endif
