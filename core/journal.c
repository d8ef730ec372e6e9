/* The persistence log's format (see journal.h). All integers are
 * little-endian; byte strings are a u32 length then the bytes. */
#include "core/journal.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "core/crc32c.h"

_Static_assert(sizeof(JOURNAL_MAGIC) == 8, "magic is 7 bytes and a NUL");

/* ---- writing ------------------------------------------------------------ */

void journal_buf_free(struct journal_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

static void le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void journal_header(uint8_t out[JOURNAL_HEADER_LEN], uint32_t shard,
		    uint64_t generation)
{
	memcpy(out, JOURNAL_MAGIC, 8);
	le32(out + 8, JOURNAL_VERSION);
	le32(out + 12, shard);
	le64(out + 16, generation);
}

/* Field writer over a buffer whose room was checked by journal_put. */
struct wr {
	uint8_t *p;
};

static void w8(struct wr *w, uint8_t v) { *w->p++ = v; }
static void w16(struct wr *w, uint16_t v)
{
	w->p[0] = (uint8_t)v;
	w->p[1] = (uint8_t)(v >> 8);
	w->p += 2;
}
static void w32(struct wr *w, uint32_t v)
{
	le32(w->p, v);
	w->p += 4;
}
static void w64(struct wr *w, uint64_t v)
{
	le64(w->p, v);
	w->p += 8;
}
static void wbytes(struct wr *w, struct journal_bytes b)
{
	w32(w, b.len);
	if (b.len)
		memcpy(w->p, b.ptr, b.len);
	w->p += b.len;
}

/* LEB128: 7 bits a byte, low first; the high bit says more follow. */
static size_t varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static size_t varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

static void wvar(struct wr *w, uint64_t v)
{
	w->p += varint_put(w->p, v);
}

/* Signed differences as small unsigned numbers: 0, -1, 1, -2 ... */
static uint64_t zigzag(uint64_t d)
{
	return d << 1 ^ (0 - (d >> 63));
}

static uint64_t unzigzag(uint64_t z)
{
	return z >> 1 ^ (0 - (z & 1));
}

size_t journal_ack_encode(uint8_t *out, struct journal_ack *prev,
			  uint64_t key, uint64_t msg_id)
{
	size_t n = varint_put(out, zigzag(key - prev->key));
	n += varint_put(out + n, zigzag(msg_id - prev->msg_id));
	prev->key = key;
	prev->msg_id = msg_id;
	return n;
}

/* A SENT entry's flags byte: QoS in bits 0-1, retain in bit 2, the number of
 * subscription ids in bits 3-5; bits 6-7 are 0. */
#define SENT_RETAIN 0x04u
#define SENT_NSUB_SHIFT 3
#define SENT_FLAGS_ZERO 0xc0u

/* A message id is its origin shard + 1 in the top byte over that shard's
 * counter: rotated so the counter comes first, it is a varint of about 4
 * bytes instead of 8. */
static uint64_t id_rotl8(uint64_t id)
{
	return id << 8 | id >> 56;
}

static uint64_t id_rotr8(uint64_t v)
{
	return v >> 8 | v << 56;
}

size_t journal_sent_encode(uint8_t *out, uint64_t *prev_key,
			   const struct journal_sent *e)
{
	assert(e->qos >= 1 && e->qos <= 2 && e->nsub <= JOURNAL_SUBIDS_MAX &&
	       e->pid);
	size_t n = varint_put(out, zigzag(e->key - *prev_key));
	*prev_key = e->key;
	out[n++] = (uint8_t)(e->qos | (e->retain ? SENT_RETAIN : 0) |
			     e->nsub << SENT_NSUB_SHIFT);
	out[n++] = (uint8_t)e->pid;
	out[n++] = (uint8_t)(e->pid >> 8);
	for (unsigned i = 0; i < e->nsub; i++)
		n += varint_put(out + n, e->sub[i]);
	return n;
}

/* The body's size, from the same fields encode_body writes. */
static size_t body_len(const struct journal_record *r)
{
	switch (r->type) {
	case JOURNAL_SESSION:
		return 8 + 4 + 8 + 1 + 1 + 1 + 4 + r->session.client_id.len + 4 +
		       r->session.username.len + (r->session.last_pid ? 2 : 0);
	case JOURNAL_SESSION_END:
		return 8;
	case JOURNAL_SUB:
		return 8 + 1 + 4 + 4 + r->sub.filter.len;
	case JOURNAL_UNSUB:
		return 8 + 4 + r->unsub.filter.len;
	case JOURNAL_MSG:
		return 8 + 1 + 1 + 4 + 8 + 4 + r->msg.topic.len + 4 +
		       r->msg.payload.len + 4 + r->msg.props.len;
	case JOURNAL_QUEUE:
		return 8 + 8 + 1 + 1 + 1 + 4u * r->queue.nsub;
	case JOURNAL_OUT:
		return 8 + 8 + 2 + 1;
	case JOURNAL_DONE:
		return 8 + 8;
	case JOURNAL_QOS2_IN:
		return 8 + 8 + 2;
	case JOURNAL_QOS2_REL:
		return 8 + 2;
	case JOURNAL_RETAIN:
		return 8 + 8 + 4 + r->retain.topic.len +
		       (r->retain.has_source
				? 1 + 1 + 4 + r->retain.source_client_id.len + 4 +
					  r->retain.source_username.len
				: 0);
	case JOURNAL_WILL:
		return 8 + 8 + 8;
	case JOURNAL_SNAPSHOT_END:
		return 0;
	case JOURNAL_SENT:
		return varint_len(id_rotl8(r->sent.msg_id)) +
		       varint_len(r->sent.n) + r->sent.list.len;
	case JOURNAL_ACKS:
		return varint_len(r->acks.n) + r->acks.list.len;
	default:
		return 0;
	}
}

static void encode_body(struct wr *w, const struct journal_record *r)
{
	switch (r->type) {
	case JOURNAL_SESSION:
		w64(w, r->session.key);
		w32(w, r->session.expiry_s);
		w64(w, r->session.offline_wall_ms);
		w8(w, r->session.protocol);
		w8(w, r->session.listener);
		w8(w, r->session.has_username);
		wbytes(w, r->session.client_id);
		wbytes(w, r->session.username);
		/* Only when there is one: one encoding per record, as the
		 * reader's round trip (fuzz_journal) expects. */
		if (r->session.last_pid)
			w16(w, r->session.last_pid);
		break;
	case JOURNAL_SESSION_END:
		w64(w, r->session_end.key);
		break;
	case JOURNAL_SUB:
		w64(w, r->sub.key);
		w8(w, r->sub.options);
		w32(w, r->sub.sub_id);
		wbytes(w, r->sub.filter);
		break;
	case JOURNAL_UNSUB:
		w64(w, r->unsub.key);
		wbytes(w, r->unsub.filter);
		break;
	case JOURNAL_MSG:
		w64(w, r->msg.id);
		w8(w, r->msg.qos);
		w8(w, r->msg.retain);
		w32(w, r->msg.expiry_s);
		w64(w, r->msg.created_wall_ms);
		wbytes(w, r->msg.topic);
		wbytes(w, r->msg.payload);
		wbytes(w, r->msg.props);
		break;
	case JOURNAL_QUEUE:
		w64(w, r->queue.key);
		w64(w, r->queue.msg_id);
		w8(w, r->queue.qos);
		w8(w, r->queue.retain);
		w8(w, r->queue.nsub);
		for (unsigned i = 0; i < r->queue.nsub; i++)
			w32(w, r->queue.sub[i]);
		break;
	case JOURNAL_OUT:
		w64(w, r->out.key);
		w64(w, r->out.msg_id);
		w16(w, r->out.pid);
		w8(w, r->out.state);
		break;
	case JOURNAL_DONE:
		w64(w, r->done.key);
		w64(w, r->done.msg_id);
		break;
	case JOURNAL_QOS2_IN:
		w64(w, r->qos2_in.key);
		w64(w, r->qos2_in.msg_id);
		w16(w, r->qos2_in.pid);
		break;
	case JOURNAL_QOS2_REL:
		w64(w, r->qos2_rel.key);
		w16(w, r->qos2_rel.pid);
		break;
	case JOURNAL_RETAIN:
		w64(w, r->retain.msg_id);
		w64(w, r->retain.seq);
		wbytes(w, r->retain.topic);
		if (r->retain.has_source) {
			w8(w, r->retain.source_listener);
			w8(w, r->retain.source_has_username);
			wbytes(w, r->retain.source_client_id);
			wbytes(w, r->retain.source_username);
		}
		break;
	case JOURNAL_WILL:
		w64(w, r->will.key);
		w64(w, r->will.msg_id);
		w64(w, r->will.at_wall_ms);
		break;
	case JOURNAL_SENT:
		wvar(w, id_rotl8(r->sent.msg_id));
		wvar(w, r->sent.n);
		if (r->sent.list.len)
			memcpy(w->p, r->sent.list.ptr, r->sent.list.len);
		w->p += r->sent.list.len;
		break;
	case JOURNAL_ACKS:
		wvar(w, r->acks.n);
		if (r->acks.list.len)
			memcpy(w->p, r->acks.list.ptr, r->acks.list.len);
		w->p += r->acks.list.len;
		break;
	}
}

int journal_put(struct journal_buf *b, const struct journal_record *r)
{
	assert(r->type >= JOURNAL_SESSION && r->type <= JOURNAL_TYPE_MAX);
	assert(r->type != JOURNAL_QUEUE || r->queue.nsub <= JOURNAL_SUBIDS_MAX);
	assert(r->type != JOURNAL_SENT ||
	       (r->sent.n >= 1 && r->sent.n <= JOURNAL_SENT_MAX));
	assert(r->type != JOURNAL_ACKS ||
	       (r->acks.n >= 1 && r->acks.n <= JOURNAL_ACKS_MAX));
	size_t body = body_len(r);
	size_t need = JOURNAL_FRAME_LEN + 1 + body;
	assert(need - JOURNAL_FRAME_LEN <= JOURNAL_RECORD_MAX);
	if (b->cap - b->len < need) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap - b->len < need)
			cap *= 2;
		uint8_t *n = realloc(b->data, cap);
		if (!n)
			return -1;
		b->data = n;
		b->cap = cap;
	}
	uint8_t *rec = b->data + b->len;
	struct wr w = {rec + JOURNAL_FRAME_LEN};
	w8(&w, r->type);
	encode_body(&w, r);
	assert((size_t)(w.p - rec) == need);
	uint32_t n = (uint32_t)(need - JOURNAL_FRAME_LEN);
	le32(rec, n);
	le32(rec + 4, crc32c(0, rec + JOURNAL_FRAME_LEN, n));
	b->len += need;
	return 0;
}

/* ---- reading ------------------------------------------------------------ */

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

int journal_header_check(const uint8_t *buf, size_t len, uint32_t *shard,
			 uint64_t *generation, const char **why)
{
	if (len < JOURNAL_HEADER_LEN) {
		*why = "shorter than the file header";
		return -1;
	}
	if (memcmp(buf, JOURNAL_MAGIC, 8)) {
		*why = "not a kite persistence log (bad magic)";
		return -1;
	}
	uint32_t version = rd32(buf + 8);
	if (version < JOURNAL_VERSION_MIN || version > JOURNAL_VERSION) {
		*why = "written by another version of kite (unknown format version)";
		return -1;
	}
	*shard = rd32(buf + 12);
	*generation = rd64(buf + 16);
	return 0;
}

void journal_reader_init(struct journal_reader *rd, const uint8_t *buf,
			 size_t len)
{
	memset(rd, 0, sizeof(*rd));
	rd->buf = buf;
	rd->len = len;
}

/* Bounds-checked field reader over one record body. */
struct rdc {
	const uint8_t *p, *end;
	bool ok;
};

static bool need(struct rdc *c, size_t n)
{
	if (c->ok && (size_t)(c->end - c->p) >= n)
		return true;
	c->ok = false;
	return false;
}

static uint8_t r8(struct rdc *c)
{
	return need(c, 1) ? *c->p++ : 0;
}

static uint16_t r16(struct rdc *c)
{
	if (!need(c, 2))
		return 0;
	uint16_t v = (uint16_t)(c->p[0] | c->p[1] << 8);
	c->p += 2;
	return v;
}

static uint32_t r32(struct rdc *c)
{
	if (!need(c, 4))
		return 0;
	uint32_t v = rd32(c->p);
	c->p += 4;
	return v;
}

static uint64_t r64(struct rdc *c)
{
	if (!need(c, 8))
		return 0;
	uint64_t v = rd64(c->p);
	c->p += 8;
	return v;
}

static struct journal_bytes rbytes(struct rdc *c)
{
	struct journal_bytes b = {0};
	uint32_t n = r32(c);
	if (!need(c, n))
		return b;
	b.ptr = c->p;
	b.len = n;
	c->p += n;
	return b;
}

/* Only the shortest encoding parses: a record reads back to the bytes it
 * came from. */
static uint64_t rvar(struct rdc *c)
{
	uint64_t v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		uint8_t b = r8(c);
		if (!c->ok)
			return 0;
		if (shift == 63 && b > 1)
			break; /* more than 64 bits */
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			if (!b && shift)
				break; /* a needless 0 byte */
			return v;
		}
	}
	c->ok = false;
	return 0;
}

static bool rbool(struct rdc *c)
{
	uint8_t v = r8(c);
	if (v > 1)
		c->ok = false;
	return v == 1;
}

/* One SENT list entry: false (and c->ok false) when it does not parse. */
static bool sent_read(struct rdc *c, uint64_t *prev_key, struct journal_sent *e)
{
	*prev_key += unzigzag(rvar(c));
	e->key = *prev_key;
	uint8_t f = r8(c);
	e->pid = r16(c);
	e->qos = f & 3u;
	e->retain = f & SENT_RETAIN;
	e->nsub = (uint8_t)((f & ~SENT_FLAGS_ZERO) >> SENT_NSUB_SHIFT);
	if ((f & SENT_FLAGS_ZERO) || e->qos < 1 || e->qos > 2 ||
	    e->nsub > JOURNAL_SUBIDS_MAX || !e->pid)
		c->ok = false;
	for (unsigned i = 0; c->ok && i < e->nsub; i++) {
		uint64_t v = rvar(c);
		if (v > UINT32_MAX)
			c->ok = false;
		e->sub[i] = (uint32_t)v;
	}
	return c->ok;
}

static void decode_sent(struct rdc *c, struct journal_record *r)
{
	r->sent.msg_id = id_rotr8(rvar(c));
	uint64_t n = rvar(c);
	if (!c->ok || n < 1 || n > JOURNAL_SENT_MAX) {
		c->ok = false;
		return;
	}
	r->sent.n = (uint32_t)n;
	r->sent.list.ptr = c->p;
	uint64_t key = 0;
	struct journal_sent e;
	for (uint64_t i = 0; i < n; i++)
		if (!sent_read(c, &key, &e))
			return;
	r->sent.list.len = (uint32_t)(c->p - r->sent.list.ptr);
}

bool journal_sent_next(struct journal_bytes *list, uint64_t *prev_key,
		       struct journal_sent *e)
{
	if (!list->len)
		return false;
	struct rdc c = {list->ptr, list->ptr + list->len, true};
	if (!sent_read(&c, prev_key, e))
		return false;
	list->len -= (uint32_t)(c.p - list->ptr);
	list->ptr = c.p;
	return true;
}

/* One list entry: false (and c->ok false) when it does not parse. */
static bool ack_read(struct rdc *c, struct journal_ack *prev)
{
	uint64_t dk = rvar(c), dm = rvar(c);
	if (!c->ok)
		return false;
	prev->key += unzigzag(dk);
	prev->msg_id += unzigzag(dm);
	return true;
}

static void decode_acks(struct rdc *c, struct journal_record *r)
{
	uint64_t n = rvar(c);
	if (!c->ok || n < 1 || n > JOURNAL_ACKS_MAX) {
		c->ok = false;
		return;
	}
	r->acks.n = (uint32_t)n;
	r->acks.list.ptr = c->p;
	struct journal_ack prev = {0};
	for (uint64_t i = 0; i < n; i++)
		if (!ack_read(c, &prev))
			return;
	r->acks.list.len = (uint32_t)(c->p - r->acks.list.ptr);
}

bool journal_ack_next(struct journal_bytes *list, struct journal_ack *prev)
{
	if (!list->len)
		return false;
	struct rdc c = {list->ptr, list->ptr + list->len, true};
	if (!ack_read(&c, prev))
		return false;
	list->len -= (uint32_t)(c.p - list->ptr);
	list->ptr = c.p;
	return true;
}

static void decode_body(struct rdc *c, struct journal_record *r)
{
	switch (r->type) {
	case JOURNAL_SESSION:
		r->session.key = r64(c);
		r->session.expiry_s = r32(c);
		r->session.offline_wall_ms = r64(c);
		r->session.protocol = r8(c);
		r->session.listener = r8(c);
		r->session.has_username = rbool(c);
		r->session.client_id = rbytes(c);
		r->session.username = rbytes(c);
		r->session.last_pid = 0;
		if (c->ok && c->p < c->end) {
			r->session.last_pid = r16(c);
			if (r->session.last_pid == 0)
				c->ok = false; /* written only when not 0 */
		}
		break;
	case JOURNAL_SESSION_END:
		r->session_end.key = r64(c);
		break;
	case JOURNAL_SUB:
		r->sub.key = r64(c);
		r->sub.options = r8(c);
		r->sub.sub_id = r32(c);
		r->sub.filter = rbytes(c);
		break;
	case JOURNAL_UNSUB:
		r->unsub.key = r64(c);
		r->unsub.filter = rbytes(c);
		break;
	case JOURNAL_MSG:
		r->msg.id = r64(c);
		r->msg.qos = r8(c);
		r->msg.retain = rbool(c);
		r->msg.expiry_s = r32(c);
		r->msg.created_wall_ms = r64(c);
		r->msg.topic = rbytes(c);
		r->msg.payload = rbytes(c);
		r->msg.props = rbytes(c);
		if (r->msg.qos > 2 || r->msg.topic.len > UINT16_MAX)
			c->ok = false;
		break;
	case JOURNAL_QUEUE:
		r->queue.key = r64(c);
		r->queue.msg_id = r64(c);
		r->queue.qos = r8(c);
		r->queue.retain = rbool(c);
		r->queue.nsub = r8(c);
		if (r->queue.qos > 2 || r->queue.nsub > JOURNAL_SUBIDS_MAX) {
			c->ok = false;
			break;
		}
		for (unsigned i = 0; i < r->queue.nsub; i++)
			r->queue.sub[i] = r32(c);
		break;
	case JOURNAL_OUT:
		r->out.key = r64(c);
		r->out.msg_id = r64(c);
		r->out.pid = r16(c);
		r->out.state = r8(c);
		if (r->out.state < JOURNAL_WAIT_PUBACK ||
		    r->out.state > JOURNAL_WAIT_PUBCOMP || !r->out.pid)
			c->ok = false;
		break;
	case JOURNAL_DONE:
		r->done.key = r64(c);
		r->done.msg_id = r64(c);
		break;
	case JOURNAL_QOS2_IN:
		r->qos2_in.key = r64(c);
		r->qos2_in.msg_id = r64(c);
		r->qos2_in.pid = r16(c);
		if (!r->qos2_in.pid)
			c->ok = false;
		break;
	case JOURNAL_QOS2_REL:
		r->qos2_rel.key = r64(c);
		r->qos2_rel.pid = r16(c);
		break;
	case JOURNAL_RETAIN:
		r->retain.msg_id = r64(c);
		r->retain.seq = r64(c);
		r->retain.topic = rbytes(c);
		if (r->retain.topic.len > UINT16_MAX)
			c->ok = false;
		r->retain.has_source = c->ok && c->p < c->end;
		if (r->retain.has_source) {
			r->retain.source_listener = r8(c);
			r->retain.source_has_username = rbool(c);
			r->retain.source_client_id = rbytes(c);
			r->retain.source_username = rbytes(c);
			/* A client id is never empty (the broker assigns
			 * one); a source only comes with a message. */
			if (!r->retain.source_client_id.len ||
			    r->retain.source_client_id.len > UINT16_MAX ||
			    !r->retain.msg_id)
				c->ok = false;
		}
		break;
	case JOURNAL_WILL:
		r->will.key = r64(c);
		r->will.msg_id = r64(c);
		r->will.at_wall_ms = r64(c);
		break;
	case JOURNAL_SNAPSHOT_END:
		break;
	case JOURNAL_SENT:
		decode_sent(c, r);
		break;
	case JOURNAL_ACKS:
		decode_acks(c, r);
		break;
	default:
		c->ok = false;
	}
}

bool journal_decode(const uint8_t *p, size_t len, struct journal_record *r)
{
	memset(r, 0, sizeof(*r));
	struct rdc c = {p, p + len, true};
	r->type = r8(&c);
	if (!c.ok)
		return false;
	decode_body(&c, r);
	/* Every byte accounted for: trailing bytes mean a damaged record. */
	return c.ok && c.p == c.end;
}

int journal_next(struct journal_reader *rd, struct journal_record *r)
{
	while (rd->pos < rd->len) {
		size_t left = rd->len - rd->pos;
		const uint8_t *rec = rd->buf + rd->pos;
		uint32_t n = left >= JOURNAL_FRAME_LEN ? rd32(rec) : 0;
		if (left < JOURNAL_FRAME_LEN || n == 0 || n > JOURNAL_RECORD_MAX ||
		    n > left - JOURNAL_FRAME_LEN) {
			/* A write the crash cut short (or damage we cannot
			 * frame past): nothing after it is trusted. */
			rd->torn = true;
			rd->torn_at = rd->pos;
			rd->torn_bytes = left;
			rd->pos = rd->len;
			return 0;
		}
		rd->pos += JOURNAL_FRAME_LEN + n;
		const uint8_t *body = rec + JOURNAL_FRAME_LEN;
		if (crc32c(0, body, n) == rd32(rec + 4) &&
		    journal_decode(body, n, r))
			return 1;
		rd->skipped++;
		rd->skipped_bytes += JOURNAL_FRAME_LEN + n;
	}
	return 0;
}
