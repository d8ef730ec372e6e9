/* libFuzzer target for core/clusterwire.c: what another node of a cluster
 * sends (bytes from the network, even if from our own nodes).
 *
 * The first byte picks the parser: a message envelope, a session
 * hand-over chunk walked item by item as the receiving shard does, or a
 * subject's tokens back to a topic. None may read past its input; an
 * item it accepts takes no more than the bytes left and is written back
 * to the same bytes. Only our own bugs abort. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clusterwire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                    \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz_clusterwire: %s:%d: %s\n",      \
				__FILE__, __LINE__, #cond);                   \
			abort();                                              \
		}                                                             \
	} while (0)

static void fuzz_chunk(const uint8_t *d, size_t len)
{
	uint8_t flags;
	uint32_t count;
	if (cluster_handover_chunk_parse(d, len, &flags, &count) < 0)
		return;
	for (size_t off = CLUSTER_HANDOVER_CHUNK_HEADER; off < len;) {
		struct cluster_handover_item it;
		long n = cluster_handover_item_parse(d + off, len - off, &it);
		if (n < 0)
			return;
		FUZZ_ASSERT(n > 0 && (size_t)n <= len - off);
		FUZZ_ASSERT(cluster_handover_item_size(&it) == (size_t)n);
		uint8_t *back = malloc((size_t)n);
		FUZZ_ASSERT(back);
		cluster_handover_item_write(&it, back);
		/* One encoding per item: the parser refuses any other. */
		FUZZ_ASSERT(!memcmp(back, d + off, (size_t)n));
		free(back);
		off += (size_t)n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const uint8_t *d = data + 1;
	size_t len = size - 1;
	switch (data[0] % 3) {
	case 0: {
		struct cluster_envelope e;
		if (cluster_envelope_parse(d, len, &e) == 0) {
			FUZZ_ASSERT(e.qos <= 2);
			FUZZ_ASSERT(CLUSTER_ENVELOPE_HEADER + (size_t)e.props_len +
					    e.payload_len == len);
		}
		break;
	}
	case 1:
		fuzz_chunk(d, len);
		break;
	default: {
		char out[CLUSTER_SUBJECT_MAX];
		int n = cluster_topic((const char *)d, len, out, sizeof(out));
		FUZZ_ASSERT(n < 0 || (size_t)n <= sizeof(out));
		break;
	}
	}
	return 0;
}
