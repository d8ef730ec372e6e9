/* flood_filter_stub.c: the flood filter API where it cannot be built (no
 * bpftool, no kernel BTF, no libbpf at build time; FLOOD_FILTER=stub in
 * bpf/bpf.mk). Load fails with a reason; everything else is a no-op. */
#include "bpf/flood_filter.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct flood_filter *flood_filter_load(const struct flood_filter_opts *opts, char *err,
				       size_t errlen)
{
	if (err && errlen)
		snprintf(err, errlen, "not available: kite was built without the XDP "
			 "filter (FLOOD_FILTER=stub: bpftool, kernel BTF or libbpf missing)");
	return NULL;
}

void flood_filter_unload(struct flood_filter *ff)
{
}

void flood_filter_strike(struct flood_filter *ff, const struct sockaddr *peer)
{
}

void flood_filter_allow(struct flood_filter *ff, const struct sockaddr *peer)
{
}

bool flood_filter_blocked(struct flood_filter *ff, const struct sockaddr *peer)
{
	return false;
}

void flood_filter_stats(struct flood_filter *ff, struct flood_filter_stats *out)
{
	memset(out, 0, sizeof(*out));
}

int flood_filter_list(struct flood_filter *ff, FILE *out)
{
	return 0;
}

int flood_filter_clear(struct flood_filter *ff, const struct sockaddr *addr)
{
	return -ENOSYS;
}

int flood_filter_cli_main(int argc, char **argv)
{
	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		printf("Usage: kite filter list|stats|clear ADDRESS [--pid PID] "
		       "[--pin-root DIR]\n"
		       "Not available: kite was built without the XDP filter.\n");
		return 0;
	}
	fprintf(stderr, "kite filter: not available: kite was built without the XDP filter\n");
	return 1;
}
