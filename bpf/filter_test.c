/* filter_test.c: the XDP program's verdicts, fixture table through
 * bpf_prog_test_run_opts (Katran style), then every IPv6 extension header
 * chain in chains[] through the same checks. Rows run in order: the token
 * buckets carry state from row to row. Exit 0 pass, 1 fail, 77 skip. */
#include <errno.h>
#include <stdbool.h>
#include <linux/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/filter.h"
#include "filter.skel.h"
#include "bpf/testpkt.h"

#define SYN TCPF_SYN_
#define ACK TCPF_ACK_
#define P XDP_PASS
#define D XDP_DROP

struct row {
	const char *what;
	struct testpkt pkt;
	int verdict;
	enum ff_counter counted; /* FF_CNT_MAX: no counter moves */
};

/* Listener ports 1883 and 8883; rate 1/s, burst 2 (no refill during the run).
 * Blocked: 10.0.0.9, 2001:db8::9, 10.0.0.8 (expired). Allowed: 10.0.0.2,
 * 10.0.0.3 (expired). */
static const struct row rows[] = {
	{ "ARP passes untouched", { "10.0.0.9", 0, 0, TP_ARP, NULL }, P, FF_CNT_MAX },
	{ "UDP to a listener port passes untouched", { "10.0.0.9", 1883, 0, TP_UDP, NULL }, P, FF_CNT_MAX },
	{ "blocked source, other port: untouched", { "10.0.0.9", 80, SYN, TP_PLAIN, NULL }, P, FF_CNT_MAX },
	{ "blocked source SYN dropped", { "10.0.0.9", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source ACK dropped", { "10.0.0.9", 8883, ACK, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source, IPv4 options", { "10.0.0.9", 1883, ACK, TP_IP_OPTIONS, NULL }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source, non-first TCP fragment (no port) dropped", { "10.0.0.9", 1883, SYN, TP_FRAGMENT, NULL }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source, tiny first fragment (TCP header cut short) dropped", { "10.0.0.9", 1883, SYN, TP_TRUNCATED, NULL }, D, FF_CNT_DROPPED_BLOCK },
	{ "expired block passes", { "10.0.0.8", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "new source SYN 1 (burst 2)", { "10.0.0.1", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "new source SYN 2", { "10.0.0.1", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "new source SYN 3 over the bucket", { "10.0.0.1", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_RATE },
	{ "bucket is per source, not per port", { "10.0.0.1", 8883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_RATE },
	{ "established ACK never limited", { "10.0.0.1", 1883, ACK, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "SYN+ACK is not a new connection", { "10.0.0.1", 1883, SYN | ACK, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "FIN never limited", { "10.0.0.1", 1883, TCPF_FIN_ | ACK, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "allowed SYN 1", { "10.0.0.2", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "allowed SYN 2", { "10.0.0.2", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "allowed SYN 3", { "10.0.0.2", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "allowed SYN 4", { "10.0.0.2", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "expired allow SYN 1", { "10.0.0.3", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "expired allow SYN 2", { "10.0.0.3", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "expired allow SYN 3 limited", { "10.0.0.3", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_RATE },
	{ "non-first TCP fragment passes, takes no token 1", { "10.0.0.4", 1883, SYN, TP_FRAGMENT, NULL }, P, FF_CNT_MAX },
	{ "non-first TCP fragment passes, takes no token 2", { "10.0.0.4", 1883, SYN, TP_FRAGMENT, NULL }, P, FF_CNT_MAX },
	{ "non-first TCP fragment passes, takes no token 3", { "10.0.0.4", 1883, SYN, TP_FRAGMENT, NULL }, P, FF_CNT_MAX },
	{ "tiny first fragment takes a token like a SYN 1", { "10.0.0.5", 1883, ACK, TP_TRUNCATED, NULL }, P, FF_CNT_MAX },
	{ "tiny first fragment takes a token like a SYN 2", { "10.0.0.5", 1883, ACK, TP_TRUNCATED, NULL }, P, FF_CNT_MAX },
	{ "tiny first fragment over the bucket", { "10.0.0.5", 1883, ACK, TP_TRUNCATED, NULL }, D, FF_CNT_DROPPED_RATE },
	{ "tiny first fragment's bucket is the source's", { "10.0.0.5", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_RATE },
	{ "IPv6 blocked SYN dropped", { "2001:db8::9", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 new source SYN 1", { "2001:db8::1", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "IPv6 new source SYN 2", { "2001:db8::1", 1883, SYN, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	{ "IPv6 new source SYN 3 limited", { "2001:db8::1", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_RATE },
	{ "IPv4-mapped key is the IPv4 source's", { "::ffff:10.0.0.9", 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_BLOCK },
	/* Extension headers where TCP cannot be read; chains[] below for the
	 * ones that are walked. */
	{ "IPv6 blocked, non-first fragment (no port) dropped", { "2001:db8::9", 80, SYN, TP_PLAIN, "l" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 blocked, non-first fragment after hop-by-hop dropped", { "2001:db8::9", 1883, ACK, TP_PLAIN, "hl" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 blocked, non-first fragment of destination options dropped", { "2001:db8::9", 1883, ACK, TP_PLAIN, "ld" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 blocked, non-first UDP fragment untouched", { "2001:db8::9", 1883, 0, TP_UDP, "l" }, P, FF_CNT_MAX },
	{ "IPv6 non-first fragment passes, takes no token 1", { "2001:db8::4", 1883, SYN, TP_PLAIN, "l" }, P, FF_CNT_MAX },
	{ "IPv6 non-first fragment passes, takes no token 2", { "2001:db8::4", 1883, SYN, TP_PLAIN, "l" }, P, FF_CNT_MAX },
	{ "IPv6 non-first fragment passes, takes no token 3", { "2001:db8::4", 1883, SYN, TP_PLAIN, "l" }, P, FF_CNT_MAX },
	{ "IPv6 blocked, ESP dropped", { "2001:db8::9", 1883, ACK, TP_PLAIN, "e" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 blocked, ESP after destination options dropped", { "2001:db8::9", 1883, ACK, TP_PLAIN, "de" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 ESP passes, takes no token 1", { "2001:db8::4", 1883, SYN, TP_PLAIN, "e" }, P, FF_CNT_MAX },
	{ "IPv6 ESP passes, takes no token 2", { "2001:db8::4", 1883, SYN, TP_PLAIN, "e" }, P, FF_CNT_MAX },
	{ "IPv6 blocked, extension header cut short dropped", { "2001:db8::9", 1883, SYN, TP_EXT_CUT, "d" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 blocked, second extension header cut short dropped", { "2001:db8::9", 1883, SYN, TP_EXT_CUT, "ha" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 extension header cut short takes a token 1", { "2001:db8::5", 1883, ACK, TP_EXT_CUT, "h" }, P, FF_CNT_MAX },
	{ "IPv6 extension header cut short takes a token 2", { "2001:db8::5", 1883, ACK, TP_EXT_CUT, "h" }, P, FF_CNT_MAX },
	{ "IPv6 extension header cut short over the bucket", { "2001:db8::5", 1883, ACK, TP_EXT_CUT, "h" }, D, FF_CNT_DROPPED_RATE },
	{ "IPv6 blocked, AH of an odd length (malformed) dropped", { "2001:db8::9", 1883, ACK, TP_PLAIN, "A" }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 AH of an odd length takes a token 1", { "2001:db8::6", 1883, ACK, TP_PLAIN, "hA" }, P, FF_CNT_MAX },
	{ "IPv6 AH of an odd length takes a token 2", { "2001:db8::6", 1883, ACK, TP_PLAIN, "A" }, P, FF_CNT_MAX },
	{ "IPv6 AH of an odd length over the bucket", { "2001:db8::6", 1883, ACK, TP_PLAIN, "A" }, D, FF_CNT_DROPPED_RATE },
	{ "IPv6 blocked, TCP header cut short after hop-by-hop dropped", { "2001:db8::9", 1883, SYN, TP_TRUNCATED, "h" }, D, FF_CNT_DROPPED_BLOCK },
};

/* Extension header chains (letters: bpf/testpkt.h) that lead to TCP. For
 * each, chain_rows() checks that a blocked source is dropped, that the walk
 * finds the port and that a new source gets its burst and no more. The
 * chains of FF_EXT_MAX and FF_EXT_MAX + 1 headers are added by main(). */
static const char *const chains[] = {
	"h", "d", "r", "a", "f", "hrdafd", "fd", "hfa", "aaa",
};

#define CHAIN_ROWS 8
#define CHAINS_MAX (sizeof(chains) / sizeof(chains[0]) + 2)
static int counters(struct filter_bpf *skel, uint64_t sum[FF_CNT_MAX])
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t v[1024];

	if (ncpu <= 0 || ncpu > 1024)
		return -1;
	for (__u32 k = 0; k < FF_CNT_MAX; k++) {
		sum[k] = 0;
		if (bpf_map__lookup_elem(skel->maps.ff_counters, &k, sizeof(k), v,
					 sizeof(v[0]) * (size_t)ncpu, 0))
			return -1;
		for (int c = 0; c < ncpu; c++)
			sum[k] += v[c];
	}
	return 0;
}

/* The rows for one chain that the program walks (at most FF_EXT_MAX
 * headers); src is a new source for it. Returns the number of rows. */
static size_t chain_rows(const char *ext, const char *src, struct row *out)
{
	const struct row r[CHAIN_ROWS] = {
		{ "blocked SYN dropped", { "2001:db8::9", 1883, SYN, TP_PLAIN, ext }, D, FF_CNT_DROPPED_BLOCK },
		{ "blocked ACK dropped", { "2001:db8::9", 8883, ACK, TP_PLAIN, ext }, D, FF_CNT_DROPPED_BLOCK },
		{ "blocked, other port: untouched", { "2001:db8::9", 80, SYN, TP_PLAIN, ext }, P, FF_CNT_MAX },
		{ "blocked, UDP: untouched", { "2001:db8::9", 1883, 0, TP_UDP, ext }, P, FF_CNT_MAX },
		{ "new source SYN 1 (burst 2)", { src, 1883, SYN, TP_PLAIN, ext }, P, FF_CNT_PASSED },
		{ "new source SYN 2", { src, 8883, SYN, TP_PLAIN, ext }, P, FF_CNT_PASSED },
		{ "new source SYN 3 over the bucket", { src, 1883, SYN, TP_PLAIN, ext }, D, FF_CNT_DROPPED_RATE },
		{ "new source ACK never limited", { src, 1883, ACK, TP_PLAIN, ext }, P, FF_CNT_PASSED },
	};

	memcpy(out, r, sizeof(r));
	return CHAIN_ROWS;
}

/* A chain longer than the program walks: TCP may be behind it, unseen. */
static size_t long_chain_rows(const char *ext, const char *src, struct row *out)
{
	const struct row r[CHAIN_ROWS] = {
		{ "blocked SYN dropped", { "2001:db8::9", 1883, SYN, TP_PLAIN, ext }, D, FF_CNT_DROPPED_BLOCK },
		{ "blocked, other port (unseen) dropped", { "2001:db8::9", 80, ACK, TP_PLAIN, ext }, D, FF_CNT_DROPPED_BLOCK },
		{ "blocked, UDP (unseen) dropped", { "2001:db8::9", 1883, 0, TP_UDP, ext }, D, FF_CNT_DROPPED_BLOCK },
		{ "new source ACK takes a token like a SYN 1", { src, 1883, ACK, TP_PLAIN, ext }, P, FF_CNT_MAX },
		{ "new source ACK takes a token like a SYN 2", { src, 1883, ACK, TP_PLAIN, ext }, P, FF_CNT_MAX },
		{ "new source SYN over the bucket", { src, 1883, SYN, TP_PLAIN, ext }, D, FF_CNT_DROPPED_RATE },
		{ "the same bucket without the chain", { src, 1883, SYN, TP_PLAIN, NULL }, D, FF_CNT_DROPPED_RATE },
		{ "new source ACK without the chain passes", { src, 1883, ACK, TP_PLAIN, NULL }, P, FF_CNT_PASSED },
	};

	memcpy(out, r, sizeof(r));
	return CHAIN_ROWS;
}

/* Runs r; prints and returns the number of failures (verdict, counters). */
static int row_run(struct filter_bpf *skel, int prog_fd, const char *prefix, const struct row *r)
{
	uint64_t before[FF_CNT_MAX], after[FF_CNT_MAX];
	int got, failed = 0;

	counters(skel, before);
	got = testpkt_run(prog_fd, &r->pkt, 1, NULL);
	counters(skel, after);
	for (int k = 0; k < FF_CNT_MAX; k++) {
		uint64_t want = before[k] + (k == (int)r->counted);

		if (after[k] != want) {
			printf("FAIL: %s%s: counter %d is %llu, want %llu\n", prefix, r->what, k,
			       (unsigned long long)after[k], (unsigned long long)want);
			failed++;
		}
	}
	if (got != r->verdict) {
		printf("FAIL: %s%s: verdict %d, want %d\n", prefix, r->what, got, r->verdict);
		failed++;
	} else if (!failed) {
		printf("ok: %s%s\n", prefix, r->what);
	}
	return failed;
}

int main(void)
{
	static char srcs[CHAINS_MAX][INET6_ADDRSTRLEN], prefixes[CHAINS_MAX][64];
	static char walked[FF_EXT_MAX + 1], too_long[FF_EXT_MAX + 2];
	uint64_t far = testpkt_now_ns() + 3600ULL * 1000000000ULL;
	struct row crows[CHAIN_ROWS];
	struct filter_bpf *skel;
	size_t n = 0;
	int prog_fd, failed = 0;

	if (geteuid() != 0) {
		printf("skip: BPF needs root\n");
		return 77;
	}
	skel = testpkt_load(1, 2);
	if (!skel) {
		printf("skip: cannot load the filter: %s\n", strerror(errno));
		return 77;
	}
	prog_fd = bpf_program__fd(skel->progs.kite_flood_filter);
	if (testpkt_expiry(skel->maps.ff_block, "10.0.0.9", far) ||
	    testpkt_expiry(skel->maps.ff_block, "2001:db8::9", far) ||
	    testpkt_expiry(skel->maps.ff_block, "10.0.0.8", 1) ||
	    testpkt_expiry(skel->maps.ff_allow, "10.0.0.2", far) ||
	    testpkt_expiry(skel->maps.ff_allow, "10.0.0.3", 1)) {
		printf("FAIL: map setup\n");
		return 1;
	}
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++, n++)
		failed += row_run(skel, prog_fd, "", &rows[i]);

	memset(walked, 'd', FF_EXT_MAX);
	memset(too_long, 'd', FF_EXT_MAX + 1);
	for (size_t c = 0; c < CHAINS_MAX; c++) {
		bool is_long = c == CHAINS_MAX - 1;
		const char *ext = c < CHAINS_MAX - 2 ? chains[c] : is_long ? too_long : walked;
		size_t k;

		snprintf(srcs[c], sizeof(srcs[c]), "2001:db8::1:%zx", c);
		snprintf(prefixes[c], sizeof(prefixes[c]), "IPv6 + %s: ", ext);
		k = is_long ? long_chain_rows(ext, srcs[c], crows) : chain_rows(ext, srcs[c], crows);
		for (size_t i = 0; i < k; i++, n++)
			failed += row_run(skel, prog_fd, prefixes[c], &crows[i]);
	}
	filter_bpf__destroy(skel);
	printf("%s: %zu rows, %d failures\n", failed ? "FAIL" : "PASS", n, failed);
	return failed ? 1 : 0;
}
