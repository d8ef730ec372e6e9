/* flood_filter_bench.c: per-packet cost of the XDP flood filter on one core.
 *
 *   make -f bpf/bpf.mk build/bpf/flood-filter-bench
 *   build/bpf/flood-filter-bench [REPEAT=10000000] [CPU=0]
 *
 * Runs the program through bpf_prog_test_run_opts with repeat=REPEAT on one
 * crafted frame per case, pinned to CPU, and prints the kernel's average
 * ns/packet and the resulting Mpps. This is the program's own cost (no NIC,
 * no driver, no page allocation): an upper bound for drop rate per core. */
#include <errno.h>
#include <linux/types.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/filter.h"
#include "filter.skel.h"
#include "bpf/testpkt.h"

struct bench_case {
	const char *what;
	struct testpkt pkt;
	int verdict;
};

/* Blocked: 10.0.0.9, 2001:db8::9. Allowed: 10.0.0.2. 10.0.0.1 has an empty
 * bucket (rate 1/s, burst 1, primed below). */
static const struct bench_case cases[] = {
	{ "drop: blocked source SYN (IPv4)", { "10.0.0.9", 1883, TCPF_SYN_, TP_PLAIN, NULL }, XDP_DROP },
	{ "drop: blocked source SYN (IPv6)", { "2001:db8::9", 1883, TCPF_SYN_, TP_PLAIN, NULL }, XDP_DROP },
	{ "drop: blocked SYN (IPv6, 3 ext headers)", { "2001:db8::9", 1883, TCPF_SYN_, TP_PLAIN, "hfd" }, XDP_DROP },
	{ "drop: SYN over the source's bucket", { "10.0.0.1", 1883, TCPF_SYN_, TP_PLAIN, NULL }, XDP_DROP },
	{ "pass: allowed source SYN", { "10.0.0.2", 1883, TCPF_SYN_, TP_PLAIN, NULL }, XDP_PASS },
	{ "pass: established ACK, unknown source", { "10.0.0.5", 1883, TCPF_ACK_, TP_PLAIN, NULL }, XDP_PASS },
	{ "pass: other port (early exit)", { "10.0.0.9", 80, TCPF_SYN_, TP_PLAIN, NULL }, XDP_PASS },
};

int main(int argc, char **argv)
{
	unsigned repeat = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 10000000;
	int cpu = argc > 2 ? atoi(argv[2]) : 0;
	uint64_t far = testpkt_now_ns() + 3600ULL * 1000000000ULL;
	struct filter_bpf *skel;
	cpu_set_t set;
	int prog_fd;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		perror("sched_setaffinity (continuing unpinned)");
	skel = testpkt_load(1, 1);
	if (!skel) {
		fprintf(stderr, "cannot load the filter (root?): %s\n", strerror(errno));
		return 77;
	}
	prog_fd = bpf_program__fd(skel->progs.kite_flood_filter);
	testpkt_expiry(skel->maps.ff_block, "10.0.0.9", far);
	testpkt_expiry(skel->maps.ff_block, "2001:db8::9", far);
	testpkt_expiry(skel->maps.ff_allow, "10.0.0.2", far);
	testpkt_run(prog_fd, &cases[3].pkt, 1, NULL); /* empties 10.0.0.1's bucket */

	printf("flood filter XDP program, bpf_prog_test_run, repeat=%u, cpu %d\n", repeat, cpu);
	printf("%-40s %8s %10s %8s\n", "case", "verdict", "ns/packet", "Mpps");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t ns = 0;
		int v = testpkt_run(prog_fd, &cases[i].pkt, repeat, &ns);

		if (v != cases[i].verdict) {
			fprintf(stderr, "%s: verdict %d, want %d\n", cases[i].what, v,
				cases[i].verdict);
			filter_bpf__destroy(skel);
			return 1;
		}
		printf("%-40s %8s %10u %8.1f\n", cases[i].what, v == XDP_DROP ? "DROP" : "PASS",
		       ns, ns ? 1000.0 / ns : 0.0);
	}
	filter_bpf__destroy(skel);
	return 0;
}
