/* Log-bucket latency histogram in the style of HdrHistogram: values below
 * 2^SUB are exact; above, each power-of-two octave is split into
 * 2^(SUB-1) equal buckets, so a recorded value is known to within 1/64 of
 * itself over the whole uint64_t range, in a fixed 30 KB table. */
#include <string.h>

#include "bench/bench.h"

#define SUB KB_HIST_SUB_BITS
#define HALF (1u << (SUB - 1))

_Static_assert(KB_HIST_BUCKETS == (64 - SUB + 2) * HALF,
	       "bucket count covers every uint64_t");

uint32_t kb_hist_index(uint64_t v)
{
	if (v < (1u << SUB))
		return (uint32_t)v;
	unsigned k = 63u - (unsigned)__builtin_clzll(v); /* k >= SUB */
	unsigned shift = k - SUB + 1;
	return shift * HALF + (uint32_t)(v >> shift);
}

uint64_t kb_hist_bucket_low(uint32_t idx)
{
	if (idx < (1u << SUB))
		return idx;
	unsigned shift = (idx / HALF) - 1;
	uint64_t m = idx - (uint64_t)shift * HALF;
	return m << shift;
}

uint64_t kb_hist_bucket_high(uint32_t idx)
{
	if (idx < (1u << SUB))
		return idx;
	unsigned shift = (idx / HALF) - 1;
	uint64_t m = idx - (uint64_t)shift * HALF;
	/* m+1 can reach 2^SUB, and shift can be 64-SUB: no overflow past
	 * 2^64 except for the very last bucket. */
	if (shift + SUB >= 64 && m + 1 == (1u << SUB))
		return UINT64_MAX;
	return ((m + 1) << shift) - 1;
}

void kb_hist_reset(struct kb_hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

void kb_hist_add(struct kb_hist *h, uint64_t v)
{
	h->bucket[kb_hist_index(v)]++;
	h->n++;
	h->sum += (double)v;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

uint64_t kb_hist_quantile(const struct kb_hist *h, double q)
{
	if (h->n == 0)
		return 0;
	if (q <= 0)
		return h->min;
	if (q >= 1)
		return h->max;
	/* The smallest value with at least ceil(q*n) values at or below. */
	uint64_t rank = (uint64_t)(q * (double)h->n);
	if ((double)rank < q * (double)h->n)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (uint32_t i = 0; i < KB_HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t lo = kb_hist_bucket_low(i);
			uint64_t hi = kb_hist_bucket_high(i);
			uint64_t mid = lo + (hi - lo) / 2;
			if (mid < h->min)
				mid = h->min;
			if (mid > h->max)
				mid = h->max;
			return mid;
		}
	}
	return h->max;
}
