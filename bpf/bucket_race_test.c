/* bucket_race_test.c: one source's SYN bucket holds when every CPU sees its
 * SYNs at once (RSS spreads one source's connections over RX queues).
 *
 * One thread per CPU, each pinned, runs the same SYN through the program
 * with bpf_prog_test_run_opts (repeat RACE_REPEAT per call) until a deadline.
 * The program's counters then say how many passed; that must stay within
 * burst + rate * elapsed, elapsed measured on CLOCK_MONOTONIC_COARSE, the
 * clock the program reads (bpf_ktime_get_coarse_ns()). Exit 0 pass, 1 fail,
 * 77 skip (not root, one CPU). */
#include <errno.h>
#include <linux/types.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/filter.h"
#include "filter.skel.h"
#include "bpf/testpkt.h"

#define RACE_RATE 1000     /* SYNs per second */
#define RACE_BURST 20000
#define RACE_MS 1000       /* how long every CPU floods */
#define RACE_REPEAT 256    /* runs per bpf_prog_test_run_opts call */
#define RACE_CPUS_MAX 64

/* The bound's slack, in SYNs. The program and this test read the same coarse
 * clock, so the first SYN's time is >= t0 and the last one's <= t1: the
 * bound burst + rate * (t1 - t0) is exact but for rounding down the rate
 * term, which one SYN covers. */
#define RACE_SLACK 1

struct racer {
	pthread_t thread;
	int cpu;
	int prog_fd;
	uint64_t runs;
	int err;       /* first failure: -errno from the run, or EINVAL: wrong CPU */
};

static pthread_barrier_t race_start;
static uint64_t race_deadline_ns; /* set before race_start opens */

static uint64_t coarse_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void *racer_run(void *arg)
{
	static const struct testpkt syn = { "10.0.0.77", 1883, TCPF_SYN_, TP_PLAIN, NULL };
	struct racer *r = arg;
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(r->cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) || sched_getcpu() != r->cpu)
		r->err = EINVAL;
	pthread_barrier_wait(&race_start);
	if (r->err)
		return NULL;
	while (coarse_now_ns() < race_deadline_ns) {
		int v = testpkt_run(r->prog_fd, &syn, RACE_REPEAT, NULL);

		if (v < 0) {
			r->err = -v;
			return NULL;
		}
		r->runs += RACE_REPEAT;
	}
	return NULL;
}

/* Per-CPU values of one counter into v (ncpu entries); returns their sum. */
static uint64_t counter_per_cpu(struct filter_bpf *skel, __u32 k, uint64_t *v, int ncpu)
{
	uint64_t sum = 0;

	if (bpf_map__lookup_elem(skel->maps.ff_counters, &k, sizeof(k), v,
				 sizeof(v[0]) * (size_t)ncpu, 0))
		return 0;
	for (int c = 0; c < ncpu; c++)
		sum += v[c];
	return sum;
}

static int allowed_cpus(int cpus[RACE_CPUS_MAX])
{
	cpu_set_t set;
	int n = 0;

	if (sched_getaffinity(0, sizeof(set), &set))
		return 0;
	for (int c = 0; c < CPU_SETSIZE && n < RACE_CPUS_MAX; c++)
		if (CPU_ISSET(c, &set))
			cpus[n++] = c;
	return n;
}

static int race_report(struct filter_bpf *skel, struct racer *rs, int n, uint64_t elapsed_ns)
{
	static uint64_t passed_v[1024], dropped_v[1024];
	int ncpu = libbpf_num_possible_cpus();
	uint64_t passed, dropped, offered = 0, bound;

	if (ncpu <= 0 || ncpu > 1024) {
		printf("FAIL: %d possible CPUs\n", ncpu);
		return 1;
	}
	passed = counter_per_cpu(skel, FF_CNT_PASSED, passed_v, ncpu);
	dropped = counter_per_cpu(skel, FF_CNT_DROPPED_RATE, dropped_v, ncpu);
	for (int i = 0; i < n; i++) {
		offered += rs[i].runs;
		printf("cpu %d: %llu SYNs, %llu passed, %llu dropped\n", rs[i].cpu,
		       (unsigned long long)rs[i].runs, (unsigned long long)passed_v[rs[i].cpu],
		       (unsigned long long)dropped_v[rs[i].cpu]);
	}
	bound = RACE_BURST + elapsed_ns * RACE_RATE / 1000000000ULL + RACE_SLACK;
	printf("rate %d/s burst %d, %.3f s: %llu SYNs offered, %llu passed, bound %llu "
	       "(burst + rate * elapsed + %d)\n", RACE_RATE, RACE_BURST, elapsed_ns / 1e9,
	       (unsigned long long)offered, (unsigned long long)passed,
	       (unsigned long long)bound, RACE_SLACK);
	if (passed + dropped != offered) {
		printf("FAIL: %llu counted, %llu offered\n",
		       (unsigned long long)(passed + dropped), (unsigned long long)offered);
		return 1;
	}
	if (passed > bound) {
		printf("FAIL: %llu SYNs passed over the bound %llu\n",
		       (unsigned long long)passed, (unsigned long long)bound);
		return 1;
	}
	if (passed < RACE_BURST || !dropped) {
		printf("FAIL: the flood did not empty the bucket (passed %llu, dropped %llu)\n",
		       (unsigned long long)passed, (unsigned long long)dropped);
		return 1;
	}
	printf("PASS: one source's SYNs from %d CPUs stay within its bucket\n", n);
	return 0;
}

int main(void)
{
	static struct racer rs[RACE_CPUS_MAX];
	int cpus[RACE_CPUS_MAX], n = allowed_cpus(cpus), prog_fd, failed = 0;
	struct filter_bpf *skel;
	uint64_t t0, t1;

	if (geteuid() != 0) {
		printf("skip: BPF needs root\n");
		return 77;
	}
	if (n < 2) {
		printf("skip: racing needs 2 CPUs, %d allowed\n", n);
		return 77;
	}
	skel = testpkt_load(RACE_RATE, RACE_BURST);
	if (!skel) {
		printf("skip: cannot load the filter: %s\n", strerror(errno));
		return 77;
	}
	prog_fd = bpf_program__fd(skel->progs.kite_flood_filter);
	pthread_barrier_init(&race_start, NULL, (unsigned)n + 1);
	for (int i = 0; i < n; i++) {
		rs[i] = (struct racer){ .cpu = cpus[i], .prog_fd = prog_fd };
		if (pthread_create(&rs[i].thread, NULL, racer_run, &rs[i])) {
			printf("FAIL: pthread_create\n");
			return 1;
		}
	}
	t0 = coarse_now_ns();
	race_deadline_ns = t0 + RACE_MS * 1000000ULL;
	pthread_barrier_wait(&race_start);
	for (int i = 0; i < n; i++)
		pthread_join(rs[i].thread, NULL);
	t1 = coarse_now_ns();
	for (int i = 0; i < n; i++) {
		if (rs[i].err) {
			printf("FAIL: cpu %d: %s\n", rs[i].cpu,
			       rs[i].err == EINVAL ? "cannot pin the thread" : strerror(rs[i].err));
			failed = 1;
		}
	}
	if (!failed)
		failed = race_report(skel, rs, n, t1 - t0);
	filter_bpf__destroy(skel);
	return failed;
}
