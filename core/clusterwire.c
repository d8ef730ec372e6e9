/* MQTT topics as NATS subjects and the message envelope (clusterwire.h). */
#include "core/clusterwire.h"

#include <assert.h>

#include <string.h>

static const char hexd[] = "0123456789ABCDEF";

static bool reserved(uint8_t c)
{
	return c <= ' ' || c == 0x7f || c == '.' || c == '*' || c == '>' ||
	       c == '%';
}

struct sbuf {
	char *p;
	size_t len, cap;
	bool over;
};

static void put(struct sbuf *b, char c)
{
	if (b->len + 1 >= b->cap) {
		b->over = true;
		return;
	}
	b->p[b->len++] = c;
}

static void put_str(struct sbuf *b, const char *s)
{
	while (*s)
		put(b, *s++);
}

/* One MQTT level as one NATS token. */
static void put_level(struct sbuf *b, const char *l, size_t n)
{
	if (!n) {
		put(b, '%');
		return;
	}
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)l[i];
		if (reserved(c)) {
			put(b, '%');
			put(b, hexd[c >> 4]);
			put(b, hexd[c & 15]);
		} else {
			put(b, (char)c);
		}
	}
}

static int finish(struct sbuf *b)
{
	if (b->over || b->len > CLUSTER_SUBJECT_MAX)
		return -1;
	b->p[b->len] = '\0';
	return (int)b->len;
}

int cluster_subject(const char *prefix, const char *topic, size_t len,
		    char *out, size_t cap)
{
	struct sbuf b = {.p = out, .cap = cap};
	put_str(&b, prefix);
	size_t start = 0;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && topic[i] != '/')
			continue;
		put(&b, '.');
		put_level(&b, topic + start, i - start);
		start = i + 1;
	}
	return finish(&b);
}

int cluster_filter_subjects(const char *prefix, const char *filter,
			    size_t len, char out[2][CLUSTER_SUBJECT_MAX + 1])
{
	struct sbuf b = {.p = out[0], .cap = CLUSTER_SUBJECT_MAX + 1};
	put_str(&b, prefix);
	size_t start = 0;
	bool multi = false;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && filter[i] != '/')
			continue;
		const char *l = filter + start;
		size_t n = i - start;
		if (n == 1 && l[0] == '#') {
			if (i != len)
				return -1;
			multi = true;
			break;
		}
		if (memchr(l, '#', n) || (memchr(l, '+', n) && n != 1))
			return -1;
		put(&b, '.');
		if (n == 1 && l[0] == '+')
			put(&b, '*');
		else
			put_level(&b, l, n);
		start = i + 1;
	}
	if (!multi)
		return finish(&b) < 0 ? -1 : 1;
	/* "a/#": "p.a" (its parent, when there is one) and "p.a.>". */
	size_t base = b.len;
	put(&b, '.');
	put(&b, '>');
	if (finish(&b) < 0)
		return -1;
	if (!start) /* "#" alone: every topic has a first level */
		return 1;
	memcpy(out[1], out[0], base);
	out[1][base] = '\0';
	return 2;
}

static int unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int cluster_topic(const char *tokens, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	size_t i = 0;
	while (i <= len) {
		/* One token up to the next '.' (or the end). */
		size_t end = i;
		while (end < len && tokens[end] != '.')
			end++;
		if (end - i == 1 && tokens[i] == '%') {
			/* an empty level */
		} else {
			if (end == i)
				return -1;
			for (size_t j = i; j < end; j++) {
				uint8_t c = (uint8_t)tokens[j];
				if (c == '%') {
					int h, l;
					if (j + 2 >= end)
						return -1;
					h = unhex(tokens[j + 1]);
					l = unhex(tokens[j + 2]);
					if (h < 0 || l < 0)
						return -1;
					c = (uint8_t)(h << 4 | l);
					j += 2;
				} else if (reserved(c)) {
					return -1;
				}
				if (o >= cap)
					return -1;
				out[o++] = (char)c;
			}
		}
		if (end == len)
			break;
		if (o >= cap)
			return -1;
		out[o++] = '/';
		i = end + 1;
	}
	return o > UINT16_MAX ? -1 : (int)o;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* version, flags (qos bits 0-1, retain bit 2), origin, seq, expiry,
 * properties length: little endian. */
void cluster_envelope_header(const struct cluster_envelope *e, uint8_t *hdr)
{
	hdr[0] = CLUSTER_ENVELOPE_VERSION;
	hdr[1] = (uint8_t)((e->qos & 3) | (e->retain ? 4 : 0));
	put_u64(hdr + 2, e->origin);
	put_u64(hdr + 10, e->seq);
	put_u32(hdr + 18, e->expiry_s);
	put_u32(hdr + 22, e->props_len);
}

int cluster_envelope_parse(const uint8_t *data, size_t len,
			   struct cluster_envelope *e)
{
	if (len < CLUSTER_ENVELOPE_HEADER || data[0] != CLUSTER_ENVELOPE_VERSION ||
	    (data[1] & ~7u) || (data[1] & 3) == 3)
		return -1;
	e->qos = data[1] & 3;
	e->retain = data[1] & 4;
	e->origin = get_u64(data + 2);
	e->seq = get_u64(data + 10);
	e->expiry_s = get_u32(data + 18);
	e->props_len = get_u32(data + 22);
	size_t rest = len - CLUSTER_ENVELOPE_HEADER;
	if (e->props_len > rest)
		return -1;
	e->props = data + CLUSTER_ENVELOPE_HEADER;
	e->payload = e->props + e->props_len;
	e->payload_len = (uint32_t)(rest - e->props_len);
	return 0;
}

/* ---- session hand-over ----------------------------------------------------
 * kind, state, pid (u16), delivery QoS, delivery retain, nsub, nsub
 * subscription ids (u32), flags (bit 0: a message, bit 1: retain),
 * QoS, expiry (u32), topic length (u16), properties length (u32),
 * payload length (u32), then topic, properties, payload: little endian. */
#define HANDOVER_FIXED 23

static void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

size_t cluster_handover_item_size(const struct cluster_handover_item *it)
{
	return HANDOVER_FIXED + 4u * it->nsub + it->topic_len +
	       (size_t)it->props_len + it->payload_len;
}

void cluster_handover_item_write(const struct cluster_handover_item *it,
				 uint8_t *out)
{
	assert(it->nsub <= CLUSTER_HANDOVER_SUBIDS_MAX);
	out[0] = it->kind;
	out[1] = it->state;
	put_u16(out + 2, it->pid);
	out[4] = it->dqos;
	out[5] = it->dretain;
	out[6] = it->nsub;
	uint8_t *p = out + 7;
	for (unsigned i = 0; i < it->nsub; i++, p += 4)
		put_u32(p, it->sub[i]);
	p[0] = (uint8_t)((it->has_msg ? 1 : 0) | (it->retain ? 2 : 0));
	p[1] = it->qos;
	put_u32(p + 2, it->expiry_s);
	put_u16(p + 6, it->topic_len);
	put_u32(p + 8, it->props_len);
	put_u32(p + 12, it->payload_len);
	p += 16;
	if (it->topic_len) /* none without a message (a PUBREL to send) */
		memcpy(p, it->topic, it->topic_len);
	p += it->topic_len;
	if (it->props_len)
		memcpy(p, it->props, it->props_len);
	p += it->props_len;
	if (it->payload_len)
		memcpy(p, it->payload, it->payload_len);
}

long cluster_handover_item_parse(const uint8_t *data, size_t len,
				 struct cluster_handover_item *it)
{
	if (len < HANDOVER_FIXED)
		return -1;
	it->kind = data[0];
	it->state = data[1];
	it->pid = (uint16_t)(data[2] | data[3] << 8);
	it->dqos = data[4];
	it->dretain = data[5] != 0;
	it->nsub = data[6];
	if (it->kind < HANDOVER_QUEUED || it->kind > HANDOVER_QOS2_IN ||
	    it->dqos > 2 || data[5] > 1 || it->nsub > CLUSTER_HANDOVER_SUBIDS_MAX ||
	    len < HANDOVER_FIXED + 4u * it->nsub)
		return -1;
	const uint8_t *p = data + 7;
	for (unsigned i = 0; i < it->nsub; i++, p += 4)
		it->sub[i] = get_u32(p);
	it->has_msg = p[0] & 1;
	it->retain = p[0] & 2;
	it->qos = p[1];
	it->expiry_s = get_u32(p + 2);
	it->topic_len = (uint16_t)(p[6] | p[7] << 8);
	it->props_len = get_u32(p + 8);
	it->payload_len = get_u32(p + 12);
	p += 16;
	size_t rest = len - (size_t)(p - data);
	size_t need = (size_t)it->topic_len + it->props_len + it->payload_len;
	if ((p[-16] & ~3u) || it->qos > 2 || need > rest ||
	    (!it->has_msg && need) || (it->has_msg && !it->topic_len))
		return -1;
	it->topic = p;
	it->props = p + it->topic_len;
	it->payload = it->props + it->props_len;
	return (long)((size_t)(p - data) + need);
}

void cluster_handover_chunk_header(uint8_t *hdr, uint8_t flags, uint32_t count)
{
	hdr[0] = CLUSTER_HANDOVER_VERSION;
	hdr[1] = flags;
	put_u32(hdr + 2, count);
}

int cluster_handover_chunk_parse(const uint8_t *data, size_t len,
				 uint8_t *flags, uint32_t *count)
{
	if (len < CLUSTER_HANDOVER_CHUNK_HEADER ||
	    data[0] != CLUSTER_HANDOVER_VERSION ||
	    (data[1] & ~(unsigned)CLUSTER_HANDOVER_END))
		return -1;
	*flags = data[1];
	*count = get_u32(data + 2);
	return 0;
}
