/* MQTT topic matching (see topic.h). Iterative, level by level: '+'
 * consumes exactly one level and '#' ends a filter, so no backtracking is
 * ever needed and the stack stays flat whatever the depth. */
#include "core/topic.h"

#include <assert.h>
#include <string.h>

size_t topic_level_end(const char *s, size_t len, size_t pos)
{
	const char *slash = pos < len ? memchr(s + pos, '/', len - pos) : NULL;

	return slash ? (size_t)(slash - s) : len;
}

static bool level_is(const char *s, size_t start, size_t end, char w)
{
	return end - start == 1 && s[start] == w;
}

static bool level_wild(const char *s, size_t start, size_t end)
{
	return level_is(s, start, end, '+') || level_is(s, start, end, '#');
}

static bool level_same(const char *a, size_t ai, size_t ae, const char *b,
		       size_t bi, size_t be)
{
	return ae - ai == be - bi && memcmp(a + ai, b + bi, ae - ai) == 0;
}

/* What follows the end of a level at `end` is exactly "/#": "a/#" also
 * matches "a". */
static bool rest_is_hash(const char *s, size_t len, size_t end)
{
	return len - end == 2 && s[end + 1] == '#';
}

/* The filter from pos on is exactly "+/#". */
static bool rest_is_plus_hash(const char *s, size_t len, size_t pos)
{
	return len - pos == 3 && s[pos] == '+' && s[pos + 1] == '/' &&
	       s[pos + 2] == '#';
}

/* 4.7.2: the first level of a '$' topic is never matched by a wildcard. */
static bool dollar_blocked(const char *filter, size_t flen, bool dollar)
{
	return dollar && level_wild(filter, 0, topic_level_end(filter, flen, 0));
}

bool topic_matches(const char *filter, size_t flen, const char *topic,
		   size_t tlen)
{
	assert((filter || flen == 0) && (topic || tlen == 0));
	if (flen == 0 || tlen == 0 ||
	    dollar_blocked(filter, flen, topic[0] == '$'))
		return false;
	for (size_t fi = 0, ti = 0;;) {
		size_t fe = topic_level_end(filter, flen, fi);
		size_t te = topic_level_end(topic, tlen, ti);

		if (level_is(filter, fi, fe, '#'))
			return true; /* the parent level and all below */
		if (!level_is(filter, fi, fe, '+') &&
		    !level_same(filter, fi, fe, topic, ti, te))
			return false;
		if (fe == flen)
			return te == tlen;
		if (te == tlen)
			return rest_is_hash(filter, flen, fe);
		fi = fe + 1;
		ti = te + 1;
	}
}

bool topic_filters_intersect(const char *a, size_t alen, const char *b,
			     size_t blen)
{
	assert((a || alen == 0) && (b || blen == 0));
	if (alen == 0 || blen == 0 || dollar_blocked(a, alen, b[0] == '$') ||
	    dollar_blocked(b, blen, a[0] == '$'))
		return false;
	for (size_t i = 0, j = 0;;) {
		size_t ae = topic_level_end(a, alen, i);
		size_t be = topic_level_end(b, blen, j);

		if (level_is(a, i, ae, '#') || level_is(b, j, be, '#'))
			return true;
		if (!level_is(a, i, ae, '+') && !level_is(b, j, be, '+') &&
		    !level_same(a, i, ae, b, j, be))
			return false;
		bool aend = ae == alen, bend = be == blen;
		if (aend && bend)
			return true;
		/* The witness is the topic so far, which must not be empty:
		 * "+" and "/#" share only "". */
		if (i == 0 && j == 0 && (ae == 0 || be == 0) &&
		    (aend || bend))
			return false;
		if (aend)
			return rest_is_hash(b, blen, be);
		if (bend)
			return rest_is_hash(a, alen, ae);
		i = ae + 1;
		j = be + 1;
	}
}

bool topic_filter_covers(const char *outer, size_t olen, const char *inner,
			 size_t ilen)
{
	assert((outer || olen == 0) && (inner || ilen == 0));
	/* inner may match '$' topics only if its first level is literal and
	 * starts with '$'; outer must then not start with a wildcard. */
	if (olen == 0 || ilen == 0 ||
	    dollar_blocked(outer, olen, inner[0] == '$'))
		return false;
	for (size_t i = 0, j = 0;;) {
		size_t oe = topic_level_end(outer, olen, i);
		size_t ie = topic_level_end(inner, ilen, j);

		if (level_is(outer, i, oe, '#'))
			return true;
		/* inner reaches levels outer pins down, unless the only
		 * topic outer misses is the parent of inner's '#', and that
		 * is empty ("+/#" covers "#", "/+/#" covers "/#"). */
		if (level_is(inner, j, ie, '#'))
			return j <= 1 && rest_is_plus_hash(outer, olen, i);
		if (!level_is(outer, i, oe, '+') &&
		    (level_is(inner, j, ie, '+') ||
		     !level_same(outer, i, oe, inner, j, ie)))
			return false;
		bool oend = oe == olen, iend = ie == ilen;
		if (oend && iend)
			return true;
		if (iend) /* "a" is matched by "a/#" too */
			return rest_is_hash(outer, olen, oe);
		if (oend)
			return false;
		i = oe + 1;
		j = ie + 1;
	}
}
