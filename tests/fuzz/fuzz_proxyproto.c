/* libFuzzer target for core/proxyproto.c: the PROXY protocol header.
 *
 * The first byte picks the version. proxy_parse must never read past its
 * input; a header it accepts must be no longer than the input and the
 * version's bound, and the same bytes cut anywhere before its end must
 * only ever ask for more (the connection feeds it as bytes arrive). A
 * refusal must say why. Only our own bugs abort. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                    \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "fuzz_proxyproto: %s:%d: %s\n",       \
				__FILE__, __LINE__, #cond);                   \
			abort();                                              \
		}                                                             \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int version = 1 + (data[0] & 1);
	data++;
	size--;
	/* An exact-size copy, so ASan sees any read past the end. */
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	struct proxy_info pi;
	const char *why;
	int n = proxy_parse(version, buf, size, &pi, &why);
	FUZZ_ASSERT(n >= -1);
	if (n < 0)
		FUZZ_ASSERT(why != NULL);
	if (n == 0)
		FUZZ_ASSERT(size < (version == 1 ? PROXY_V1_MAX : PROXY_V2_MAX));
	if (n > 0) {
		FUZZ_ASSERT((size_t)n <= size);
		FUZZ_ASSERT((size_t)n <= (version == 1 ? PROXY_V1_MAX : PROXY_V2_MAX));
		FUZZ_ASSERT(pi.version == version);
		FUZZ_ASSERT(pi.family == PROXY_KEEP_SOCKET || pi.family == PROXY_INET ||
			    pi.family == PROXY_INET6);
		for (int cut = 0; cut < n; cut++) {
			struct proxy_info p2;
			FUZZ_ASSERT(proxy_parse(version, buf, (size_t)cut, &p2, &why) == 0);
		}
		/* What follows the header never changes the answer. */
		struct proxy_info p3;
		FUZZ_ASSERT(proxy_parse(version, buf, (size_t)n, &p3, &why) == n);
		FUZZ_ASSERT(!memcmp(&p3, &pi, sizeof(pi)));
	}
	free(buf);
	return 0;
}
