/* filter_test.c: the XDP program's verdicts, fixture table through
 * bpf_prog_test_run_opts (Katran style). Rows run in order: the token
 * buckets carry state from row to row. Exit 0 pass, 1 fail, 77 skip. */
#include <errno.h>
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
	{ "ARP passes untouched", { "10.0.0.9", 0, 0, TP_ARP }, P, FF_CNT_MAX },
	{ "UDP to a listener port passes untouched", { "10.0.0.9", 1883, 0, TP_UDP }, P, FF_CNT_MAX },
	{ "blocked source, other port: untouched", { "10.0.0.9", 80, SYN, TP_PLAIN }, P, FF_CNT_MAX },
	{ "blocked source SYN dropped", { "10.0.0.9", 1883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source ACK dropped", { "10.0.0.9", 8883, ACK, TP_PLAIN }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source, IPv4 options", { "10.0.0.9", 1883, ACK, TP_IP_OPTIONS }, D, FF_CNT_DROPPED_BLOCK },
	{ "blocked source, non-first fragment: no TCP header", { "10.0.0.9", 1883, SYN, TP_FRAGMENT }, P, FF_CNT_MAX },
	{ "blocked source, truncated TCP header", { "10.0.0.9", 1883, SYN, TP_TRUNCATED }, P, FF_CNT_MAX },
	{ "expired block passes", { "10.0.0.8", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "new source SYN 1 (burst 2)", { "10.0.0.1", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "new source SYN 2", { "10.0.0.1", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "new source SYN 3 over the bucket", { "10.0.0.1", 1883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_RATE },
	{ "bucket is per source, not per port", { "10.0.0.1", 8883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_RATE },
	{ "established ACK never limited", { "10.0.0.1", 1883, ACK, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "SYN+ACK is not a new connection", { "10.0.0.1", 1883, SYN | ACK, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "FIN never limited", { "10.0.0.1", 1883, TCPF_FIN_ | ACK, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "allowed SYN 1", { "10.0.0.2", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "allowed SYN 2", { "10.0.0.2", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "allowed SYN 3", { "10.0.0.2", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "allowed SYN 4", { "10.0.0.2", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "expired allow SYN 1", { "10.0.0.3", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "expired allow SYN 2", { "10.0.0.3", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "expired allow SYN 3 limited", { "10.0.0.3", 1883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_RATE },
	{ "IPv6 blocked SYN dropped", { "2001:db8::9", 1883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_BLOCK },
	{ "IPv6 blocked, extension header: not walked", { "2001:db8::9", 1883, SYN, TP_EXT_HEADER }, P, FF_CNT_MAX },
	{ "IPv6 new source SYN 1", { "2001:db8::1", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "IPv6 new source SYN 2", { "2001:db8::1", 1883, SYN, TP_PLAIN }, P, FF_CNT_PASSED },
	{ "IPv6 new source SYN 3 limited", { "2001:db8::1", 1883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_RATE },
	{ "IPv4-mapped key is the IPv4 source's", { "::ffff:10.0.0.9", 1883, SYN, TP_PLAIN }, D, FF_CNT_DROPPED_BLOCK },
};

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

int main(void)
{
	uint64_t far = testpkt_now_ns() + 3600ULL * 1000000000ULL, before[FF_CNT_MAX], after[FF_CNT_MAX];
	struct filter_bpf *skel;
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
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		const struct row *r = &rows[i];
		int got;

		counters(skel, before);
		got = testpkt_run(prog_fd, &r->pkt, 1, NULL);
		counters(skel, after);
		for (int k = 0; k < FF_CNT_MAX; k++) {
			uint64_t want = before[k] + (k == (int)r->counted);

			if (after[k] != want) {
				printf("FAIL: %s: counter %d is %llu, want %llu\n", r->what, k,
				       (unsigned long long)after[k], (unsigned long long)want);
				failed++;
			}
		}
		if (got != r->verdict) {
			printf("FAIL: %s: verdict %d, want %d\n", r->what, got, r->verdict);
			failed++;
		} else {
			printf("ok: %s\n", r->what);
		}
	}
	filter_bpf__destroy(skel);
	printf("%s: %zu rows, %d failures\n", failed ? "FAIL" : "PASS",
	       sizeof(rows) / sizeof(rows[0]), failed);
	return failed ? 1 : 0;
}
