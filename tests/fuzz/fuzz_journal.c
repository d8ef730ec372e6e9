/* libFuzzer target for core/journal: the persistence log reader on any
 * bytes (a damaged or hostile file in persistence_location).
 *
 * Checked:
 *  - no crash, no read outside the buffer, whatever the lengths say;
 *  - the reader always ends, and accounts for every byte: what it read,
 *    skipped and cut add up to the input;
 *  - every record it returns encodes back to the same bytes (so a record
 *    that parses is one kite could have written). */
#include "core/journal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(c)                                                        \
	do {                                                                  \
		if (!(c)) {                                                   \
			fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n",     \
				__FILE__, __LINE__, #c);                      \
			abort();                                              \
		}                                                             \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t shard;
	uint64_t gen;
	const char *why;
	(void)journal_header_check(data, size, &shard, &gen, &why);

	struct journal_reader rd;
	journal_reader_init(&rd, data, size);
	struct journal_record r;
	size_t good = 0;
	while (journal_next(&rd, &r) == 1) {
		struct journal_buf b = {0};
		FUZZ_CHECK(journal_put(&b, &r) == 0);
		/* Re-encoded: same length and body as the record read. */
		uint32_t n = (uint32_t)(b.len - JOURNAL_FRAME_LEN);
		size_t at = rd.pos - b.len;
		FUZZ_CHECK(at + b.len <= size);
		FUZZ_CHECK(!memcmp(b.data, data + at, b.len));
		(void)n;
		good += b.len;
		journal_buf_free(&b);
	}
	FUZZ_CHECK(rd.pos == size);
	FUZZ_CHECK(good + rd.skipped_bytes + (rd.torn ? rd.torn_bytes : 0) == size);
	return 0;
}
