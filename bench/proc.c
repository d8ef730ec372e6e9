/* What the generator reads about processes: the broker's CPU time and
 * memory from /proc, its own CPU time, and the descriptor limit. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"

uint64_t kb_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static ssize_t read_small_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, cap - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

/* The process's CPU clock: every thread's run time, exited ones too, in
 * nanoseconds. /proc/PID/stat's utime + stime are whole ticks (10 ms),
 * and the kernel's split of the run time into them lags over short
 * windows: a broker using 0.08 s of a 1 s window read 0.04-0.05 there. */
static double cpu_clock_s(pid_t pid)
{
	clockid_t clk;
	struct timespec ts;
	if (clock_getcpuclockid(pid, &clk) != 0 || clock_gettime(clk, &ts) != 0)
		return -1;
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Else /proc/PID/stat: fields 14 and 15 (utime, stime) count every thread
 * of the process. The comm field may hold spaces and parentheses, so
 * parsing starts after the last ')'. */
double kb_proc_cpu_s(pid_t pid)
{
	double precise = cpu_clock_s(pid);
	if (precise >= 0)
		return precise;
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (read_small_file(path, buf, sizeof(buf)) < 0)
		return -1;
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	p++;
	/* After ')': field 3 (state) is the first token. */
	unsigned long long utime = 0, stime = 0;
	int field = 2;
	char *save = NULL;
	for (char *tok = strtok_r(p, " ", &save); tok;
	     tok = strtok_r(NULL, " ", &save)) {
		field++;
		if (field == 14)
			utime = strtoull(tok, NULL, 10);
		else if (field == 15) {
			stime = strtoull(tok, NULL, 10);
			break;
		}
	}
	if (field != 15)
		return -1;
	long hz = sysconf(_SC_CLK_TCK);
	return (double)(utime + stime) / (double)(hz > 0 ? hz : 100);
}

static long status_field_kb(pid_t pid, const char *key)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (read_small_file(path, buf, sizeof(buf)) < 0)
		return -1;
	size_t klen = strlen(key);
	for (char *line = buf; line && *line;) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':')
			return strtol(line + klen + 1, NULL, 10);
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return -1;
}

long kb_proc_rss_kb(pid_t pid)
{
	return status_field_kb(pid, "VmRSS");
}

long kb_proc_hwm_kb(pid_t pid)
{
	return status_field_kb(pid, "VmHWM");
}

double kb_self_cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t kb_thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t kb_raise_nofile(uint64_t need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 0;
	if (rl.rlim_cur >= need)
		return rl.rlim_cur;
	if (rl.rlim_max < need) {
		/* Root may raise the hard limit (up to fs.nr_open). */
		struct rlimit want = {need, need};
		if (setrlimit(RLIMIT_NOFILE, &want) == 0)
			return need;
	}
	rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
	setrlimit(RLIMIT_NOFILE, &rl);
	getrlimit(RLIMIT_NOFILE, &rl);
	return rl.rlim_cur;
}

/* One CPU's line of /proc/stat, in USER_HZ ticks: busy = user + nice +
 * system + irq + softirq + steal; total adds idle and iowait. */
int kb_proc_cpu_ticks(int cpu, uint64_t *busy, uint64_t *total)
{
	char buf[16384];
	if (cpu < 0 || read_small_file("/proc/stat", buf, sizeof(buf)) < 0)
		return -1;
	char key[16];
	int klen = snprintf(key, sizeof(key), "cpu%d ", cpu);
	for (char *line = buf; line && *line;) {
		if (strncmp(line, key, (size_t)klen) == 0) {
			unsigned long long v[8] = {0};
			if (sscanf(line + klen, "%llu %llu %llu %llu %llu %llu %llu %llu",
				   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
				   &v[7]) < 7)
				return -1;
			*busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
			*total = *busy + v[3] + v[4];
			return 0;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return -1;
}

/* The CPU pid is pinned to, or -1 when it may run on several. */
int kb_proc_pinned_cpu(pid_t pid)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	if (sched_getaffinity(pid, sizeof(set), &set) != 0 ||
	    CPU_COUNT(&set) != 1)
		return -1;
	for (int i = 0; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, &set))
			return i;
	return -1;
}
