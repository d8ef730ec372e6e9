/* flood_filter.c: loader and user-space half of the XDP flood filter
 * (libbpf-bootstrap shape: filter.bpf.c + filter.h + this loader, skeleton
 * generated into $(BUILD)/bpf by bpf/bpf.mk). */
#include "bpf/flood_filter.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <linux/types.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <netinet/in.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpf/filter.h"
#include "filter.skel.h"

#define NS_PER_S 1000000000ULL
#define FF_BTF_PATH "/sys/kernel/btf/vmlinux"
#define FF_BPFFS "/sys/fs/bpf"
#define FF_BPFFS_MAGIC 0xcafe4a11
#define FF_STRIKE_WINDOW_NS (60 * NS_PER_S)   /* strikes older than this are forgotten */
#define FF_LEVEL_FORGET_NS (3600 * NS_PER_S)  /* quiet time after a block that resets doubling */
#define FF_BLOCK_SECONDS_MAX 86400
#define FF_LEVEL_MAX 16
#define FF_PRUNE_BATCH 1024                   /* expired blocks deleted per prune */
#define FF_ITER_MAX (2 * FF_BLOCK_MAX)        /* bound on a map walk that races deletes */
#define FF_DIR_MAX 256                        /* <pin_root>/<pid> */
#define FF_SYN_BURST_MAX 1000000

_Static_assert(FLOOD_FILTER_PORTS_MAX == FF_PORTS_MAX, "API and program port limits differ");
_Static_assert(sizeof(struct ff_key) == 16, "key is one IPv6 address");
_Static_assert(FF_BLOCK_SECONDS_MAX * NS_PER_S < UINT64_MAX / 2, "block expiry overflows");
_Static_assert(sizeof(struct ff_bucket) == sizeof(uint64_t), "a bucket is one word: one CAS");
_Static_assert(FF_SYN_BURST_MAX * FF_NS_PER_S < UINT64_MAX / 4, "burst * interval overflows");

/* Pinned maps: <pin_root>/<pid>/<name>, what `kite filter` opens. */
enum ff_pin { FF_PIN_BLOCK, FF_PIN_ALLOW, FF_PIN_STRIKES, FF_PIN_COUNTERS, FF_PIN_MAX };
static const char *const ff_pin_names[FF_PIN_MAX] = {
	[FF_PIN_BLOCK] = "block", [FF_PIN_ALLOW] = "allow",
	[FF_PIN_STRIKES] = "strikes", [FF_PIN_COUNTERS] = "counters",
};

struct ff_iface {
	int link_fd;  /* XDP bpf_link: closing it (or dying) detaches */
	int ifindex;
	bool generic; /* SKB mode: the driver has no native XDP */
};

struct flood_filter {
	struct filter_bpf *skel;
	struct ff_iface ifaces[FLOOD_FILTER_IFACES_MAX];
	unsigned n_ifaces;
	uint32_t strikes, block_seconds, allow_seconds;
	pthread_mutex_t strike_lock; /* strike record read-modify-write */
	_Atomic uint64_t blocks_added, sources_allowed;
	char pin_dir[FF_DIR_MAX];    /* "" when not pinned */
};

static void ff_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void ff_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static uint64_t ff_now_ns(void)
{
	struct timespec ts;

	/* The program reads CLOCK_MONOTONIC too (bpf_ktime_get_coarse_ns()). */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* libbpf is quiet unless KITE_BPF_DEBUG is set: err carries the reason. */
static int ff_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG || !getenv("KITE_BPF_DEBUG"))
		return 0;
	return vfprintf(stderr, fmt, ap);
}

static bool ff_key_from_sockaddr(const struct sockaddr *sa, struct ff_key *key)
{
	memset(key, 0, sizeof(*key));
	if (!sa)
		return false;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		key->addr[2] = htonl(0xffff);
		key->addr[3] = in->sin_addr.s_addr;
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		memcpy(key->addr, &in6->sin6_addr, sizeof(key->addr));
		return true;
	}
	return false;
}

static bool ff_key_parse(const char *s, struct ff_key *key)
{
	memset(key, 0, sizeof(*key));
	if (inet_pton(AF_INET, s, &key->addr[3]) == 1) {
		key->addr[2] = htonl(0xffff);
		return true;
	}
	return inet_pton(AF_INET6, s, key->addr) == 1;
}

static void ff_key_format(const struct ff_key *key, char *buf, size_t len)
{
	if (!key->addr[0] && !key->addr[1] && key->addr[2] == htonl(0xffff))
		inet_ntop(AF_INET, &key->addr[3], buf, (socklen_t)len);
	else
		inet_ntop(AF_INET6, key->addr, buf, (socklen_t)len);
}

/* ---- map operations shared by the broker and `kite filter` (fds only) ---- */

static int ff_list_fd(int block_fd, FILE *out)
{
	struct ff_key key, next;
	struct ff_expiry e;
	uint64_t now = ff_now_ns();
	const void *prev = NULL;
	char buf[INET6_ADDRSTRLEN];
	int n = 0;

	for (int i = 0; i < FF_ITER_MAX && !bpf_map_get_next_key(block_fd, prev, &next); i++) {
		if (!bpf_map_lookup_elem(block_fd, &next, &e) && e.expires_ns > now) {
			ff_key_format(&next, buf, sizeof(buf));
			fprintf(out, "%s %llu\n", buf,
				(unsigned long long)((e.expires_ns - now + NS_PER_S - 1) / NS_PER_S));
			n++;
		}
		key = next;
		prev = &key;
	}
	return n;
}

static int ff_clear_fd(int block_fd, int strikes_fd, const struct ff_key *key)
{
	struct ff_expiry e;
	bool was_blocked = !bpf_map_lookup_elem(block_fd, key, &e) && e.expires_ns > ff_now_ns();
	int rc = bpf_map_delete_elem(block_fd, key);

	if (rc && rc != -ENOENT)
		return rc;
	bpf_map_delete_elem(strikes_fd, key);
	return was_blocked ? 0 : -ENOENT;
}

static int ff_counters_fd(int counters_fd, uint64_t sum[FF_CNT_MAX])
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t *v;

	memset(sum, 0, FF_CNT_MAX * sizeof(sum[0]));
	if (ncpu <= 0)
		return ncpu ? ncpu : -EINVAL;
	v = calloc((size_t)ncpu, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (__u32 k = 0; k < FF_CNT_MAX; k++) {
		if (bpf_map_lookup_elem(counters_fd, &k, v))
			continue;
		for (int c = 0; c < ncpu; c++)
			sum[k] += v[c];
	}
	free(v);
	return 0;
}

/* Deletes up to FF_PRUNE_BATCH expired blocks (when the map is full). */
static void ff_prune_blocks(int block_fd, uint64_t now)
{
	static struct ff_key expired[FF_PRUNE_BATCH]; /* under strike_lock */
	struct ff_key key, next;
	struct ff_expiry e;
	const void *prev = NULL;
	int n = 0;

	for (int i = 0; i < FF_ITER_MAX && n < FF_PRUNE_BATCH &&
			!bpf_map_get_next_key(block_fd, prev, &next); i++) {
		if (!bpf_map_lookup_elem(block_fd, &next, &e) && e.expires_ns <= now)
			expired[n++] = next;
		key = next;
		prev = &key;
	}
	for (int i = 0; i < n; i++)
		bpf_map_delete_elem(block_fd, &expired[i]);
}

/* ---- load / unload ---- */

static bool ff_opts_valid(const struct flood_filter_opts *o, char *err, size_t errlen)
{
	if (!o || !o->ifaces || o->n_ifaces < 1 || o->n_ifaces > FLOOD_FILTER_IFACES_MAX) {
		ff_err(err, errlen, "bad options: 1..%d interfaces", FLOOD_FILTER_IFACES_MAX);
		return false;
	}
	if (!o->ports || o->n_ports < 1 || o->n_ports > FLOOD_FILTER_PORTS_MAX) {
		ff_err(err, errlen, "bad options: 1..%d ports", FLOOD_FILTER_PORTS_MAX);
		return false;
	}
	if (o->syn_rate && (o->syn_burst < 1 || o->syn_burst > FF_SYN_BURST_MAX)) {
		ff_err(err, errlen, "bad options: syn_burst must be 1..%d", FF_SYN_BURST_MAX);
		return false;
	}
	if (o->strikes < 1 || o->block_seconds < 1 || o->block_seconds > FF_BLOCK_SECONDS_MAX) {
		ff_err(err, errlen, "bad options: strikes >= 1, block_seconds 1..%d",
		       FF_BLOCK_SECONDS_MAX);
		return false;
	}
	return true;
}

static void ff_set_rodata(struct filter_bpf *skel, const struct flood_filter_opts *o)
{
	for (unsigned i = 0; i < o->n_ports; i++)
		skel->rodata->listen_ports[i] = htons(o->ports[i]);
	skel->rodata->n_listen_ports = o->n_ports;
	skel->rodata->syn_interval_ns = o->syn_rate ? FF_SYN_INTERVAL_NS(o->syn_rate) : 0;
	skel->rodata->syn_burst_ns = (uint64_t)o->syn_burst * skel->rodata->syn_interval_ns;
}

static int ff_attach(struct flood_filter *ff, struct ff_iface *fi, const char *name,
		     char *err, size_t errlen)
{
	int prog_fd = bpf_program__fd(ff->skel->progs.kite_flood_filter);
	LIBBPF_OPTS(bpf_link_create_opts, lo, .flags = XDP_FLAGS_DRV_MODE);
	int fd;

	/* A link, not bpf_xdp_attach(): if the broker dies, the kernel detaches
	 * the program instead of leaving a stale filter on the interface. */
	fd = bpf_link_create(prog_fd, fi->ifindex, BPF_XDP, &lo);
	if (fd < 0 && fd != -EBUSY && fd != -EEXIST && fd != -EPERM) {
		lo.flags = XDP_FLAGS_SKB_MODE;
		fd = bpf_link_create(prog_fd, fi->ifindex, BPF_XDP, &lo);
		fi->generic = true;
	}
	if (fd < 0) {
		ff_err(err, errlen, "attach failed on %s: %s%s", name, strerror(-fd),
		       fd == -EBUSY || fd == -EEXIST ? " (another XDP program is attached)" : "");
		return fd;
	}
	fi->link_fd = fd;
	return 0;
}

static void ff_unpin_dir(const char *dir)
{
	char path[PATH_MAX];

	for (int i = 0; i < FF_PIN_MAX; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, ff_pin_names[i]);
		unlink(path);
	}
	rmdir(dir);
}

/* Removes <root>/<pid> left by brokers that died without unloading. */
static void ff_prune_stale_pins(const char *root)
{
	char path[FF_DIR_MAX];
	struct dirent *d;
	DIR *dir = opendir(root);

	if (!dir)
		return;
	while ((d = readdir(dir))) {
		char *endp;
		long pid = strtol(d->d_name, &endp, 10);

		if (*endp || pid <= 0 || !(kill((pid_t)pid, 0) && errno == ESRCH))
			continue; /* not a pid, or alive (or not ours to signal) */
		if (snprintf(path, sizeof(path), "%s/%s", root, d->d_name) < (int)sizeof(path))
			ff_unpin_dir(path);
	}
	closedir(dir);
}

static int ff_pin(struct flood_filter *ff, const char *root, char *err, size_t errlen)
{
	struct bpf_map *maps[FF_PIN_MAX] = {
		[FF_PIN_BLOCK] = ff->skel->maps.ff_block,
		[FF_PIN_ALLOW] = ff->skel->maps.ff_allow,
		[FF_PIN_STRIKES] = ff->skel->maps.ff_strikes,
		[FF_PIN_COUNTERS] = ff->skel->maps.ff_counters,
	};
	char path[PATH_MAX];
	struct statfs sfs;
	int rc;

	if (!strcmp(root, FLOOD_FILTER_PIN_ROOT) &&
	    (statfs(FF_BPFFS, &sfs) || sfs.f_type != FF_BPFFS_MAGIC) &&
	    mount("bpf", FF_BPFFS, "bpf", 0, "mode=0700")) {
		ff_err(err, errlen, "pin failed: cannot mount bpffs on %s: %s", FF_BPFFS,
		       strerror(errno));
		return -errno;
	}
	if (strlen(root) > FF_DIR_MAX - 16) {
		ff_err(err, errlen, "pin failed: pin_root longer than %d", FF_DIR_MAX - 16);
		return -ENAMETOOLONG;
	}
	if (mkdir(root, 0700) && errno != EEXIST) {
		ff_err(err, errlen, "pin failed: mkdir %s: %s", root, strerror(errno));
		return -errno;
	}
	ff_prune_stale_pins(root);
	snprintf(ff->pin_dir, sizeof(ff->pin_dir), "%s/%d", root, (int)getpid());
	ff_unpin_dir(ff->pin_dir); /* our pid's leftovers from a previous life */
	if (mkdir(ff->pin_dir, 0700)) {
		ff_err(err, errlen, "pin failed: mkdir %s: %s", ff->pin_dir, strerror(errno));
		ff->pin_dir[0] = 0;
		return -errno;
	}
	for (int i = 0; i < FF_PIN_MAX; i++) {
		snprintf(path, sizeof(path), "%s/%s", ff->pin_dir, ff_pin_names[i]);
		rc = bpf_map__pin(maps[i], path);
		if (rc) {
			ff_err(err, errlen, "pin failed: %s: %s", path, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

static int ff_open_and_load(struct flood_filter *ff, const struct flood_filter_opts *o,
			    char *err, size_t errlen)
{
	int rc;

	libbpf_set_print(ff_libbpf_print);
	ff->skel = filter_bpf__open();
	if (!ff->skel) {
		ff_err(err, errlen, "open failed: %s", strerror(errno));
		return -errno;
	}
	ff_set_rodata(ff->skel, o);
	rc = filter_bpf__load(ff->skel);
	if (rc == -EPERM || rc == -EACCES)
		ff_err(err, errlen, "no privileges: loading BPF needs root "
		       "(CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)");
	else if (rc)
		ff_err(err, errlen, "load failed: %s (KITE_BPF_DEBUG=1 prints libbpf's log)",
		       strerror(-rc));
	return rc;
}

struct flood_filter *flood_filter_load(const struct flood_filter_opts *o, char *err,
				       size_t errlen)
{
	struct flood_filter *ff;

	if (!ff_opts_valid(o, err, errlen))
		return NULL;
	if (access(FF_BTF_PATH, R_OK)) {
		ff_err(err, errlen, "no BTF: %s: %s (kernel needs CONFIG_DEBUG_INFO_BTF)",
		       FF_BTF_PATH, strerror(errno));
		return NULL;
	}
	ff = calloc(1, sizeof(*ff));
	if (!ff) {
		ff_err(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&ff->strike_lock, NULL);
	ff->strikes = o->strikes;
	ff->block_seconds = o->block_seconds;
	ff->allow_seconds = o->allow_seconds ? o->allow_seconds : FLOOD_FILTER_ALLOW_SECONDS;
	for (unsigned i = 0; i < o->n_ifaces; i++) {
		ff->ifaces[i].link_fd = -1;
		ff->ifaces[i].ifindex = (int)if_nametoindex(o->ifaces[i]);
		if (!ff->ifaces[i].ifindex) {
			ff_err(err, errlen, "interface %s missing", o->ifaces[i]);
			goto err_unload;
		}
	}
	ff->n_ifaces = o->n_ifaces;
	if (ff_open_and_load(ff, o, err, errlen))
		goto err_unload;
	for (unsigned i = 0; i < ff->n_ifaces; i++)
		if (ff_attach(ff, &ff->ifaces[i], o->ifaces[i], err, errlen))
			goto err_unload;
	if (ff_pin(ff, o->pin_root ? o->pin_root : FLOOD_FILTER_PIN_ROOT, err, errlen) &&
	    ff->pin_dir[0]) {
		ff_unpin_dir(ff->pin_dir); /* the maps pinned before the failure */
		ff->pin_dir[0] = 0;
	}
	return ff;

err_unload:
	flood_filter_unload(ff);
	return NULL;
}

void flood_filter_unload(struct flood_filter *ff)
{
	if (!ff)
		return;
	for (unsigned i = 0; i < ff->n_ifaces; i++)
		if (ff->ifaces[i].link_fd >= 0)
			close(ff->ifaces[i].link_fd);
	if (ff->pin_dir[0])
		ff_unpin_dir(ff->pin_dir);
	filter_bpf__destroy(ff->skel);
	pthread_mutex_destroy(&ff->strike_lock);
	free(ff);
}

/* ---- events ---- */

/* Blocks key for block_seconds << level; returns the expiry. */
static uint64_t ff_block_key(struct flood_filter *ff, const struct ff_key *key,
			     uint32_t level, uint64_t now)
{
	int block_fd = bpf_map__fd(ff->skel->maps.ff_block);
	uint64_t secs = (uint64_t)ff->block_seconds << level;
	struct ff_expiry e;
	int rc;

	if (secs > FF_BLOCK_SECONDS_MAX)
		secs = FF_BLOCK_SECONDS_MAX;
	e.expires_ns = now + secs * NS_PER_S;
	rc = bpf_map_update_elem(block_fd, key, &e, BPF_ANY);
	if (rc == -E2BIG) {
		ff_prune_blocks(block_fd, now);
		rc = bpf_map_update_elem(block_fd, key, &e, BPF_ANY);
	}
	/* Keep ff_block and ff_allow disjoint: the program checks block first
	 * anyway, but an allow entry must not outlive the trust it stood for. */
	bpf_map_delete_elem(bpf_map__fd(ff->skel->maps.ff_allow), key);
	if (!rc)
		atomic_fetch_add_explicit(&ff->blocks_added, 1, memory_order_relaxed);
	return e.expires_ns;
}

void flood_filter_strike(struct flood_filter *ff, const struct sockaddr *peer)
{
	struct ff_key key;
	struct ff_strikes s;
	uint64_t now;
	int strikes_fd;

	if (!ff || !ff_key_from_sockaddr(peer, &key))
		return;
	strikes_fd = bpf_map__fd(ff->skel->maps.ff_strikes);
	pthread_mutex_lock(&ff->strike_lock);
	now = ff_now_ns();
	if (bpf_map_lookup_elem(strikes_fd, &key, &s))
		memset(&s, 0, sizeof(s));
	if (now - s.window_start_ns > FF_STRIKE_WINDOW_NS) {
		s.count = 0;
		s.window_start_ns = now;
	}
	if (s.level && now > s.blocked_until_ns + FF_LEVEL_FORGET_NS)
		s.level = 0;
	if (++s.count >= ff->strikes) {
		s.blocked_until_ns = ff_block_key(ff, &key, s.level, now);
		s.level += s.level < FF_LEVEL_MAX;
		s.count = 0;
	}
	bpf_map_update_elem(strikes_fd, &key, &s, BPF_ANY);
	pthread_mutex_unlock(&ff->strike_lock);
}

void flood_filter_allow(struct flood_filter *ff, const struct sockaddr *peer)
{
	struct ff_key key;
	struct ff_expiry e;
	int allow_fd;

	if (!ff || !ff_key_from_sockaddr(peer, &key))
		return;
	allow_fd = bpf_map__fd(ff->skel->maps.ff_allow);
	e.expires_ns = ff_now_ns() + (uint64_t)ff->allow_seconds * NS_PER_S;
	if (!bpf_map_update_elem(allow_fd, &key, &e, BPF_NOEXIST))
		atomic_fetch_add_explicit(&ff->sources_allowed, 1, memory_order_relaxed);
	else
		bpf_map_update_elem(allow_fd, &key, &e, BPF_ANY);
}

bool flood_filter_blocked(struct flood_filter *ff, const struct sockaddr *peer)
{
	struct ff_key key;
	struct ff_expiry e;

	if (!ff || !ff_key_from_sockaddr(peer, &key))
		return false;
	return !bpf_map_lookup_elem(bpf_map__fd(ff->skel->maps.ff_block), &key, &e) &&
	       e.expires_ns > ff_now_ns();
}

void flood_filter_stats(struct flood_filter *ff, struct flood_filter_stats *out)
{
	uint64_t c[FF_CNT_MAX];

	memset(out, 0, sizeof(*out));
	if (!ff)
		return;
	ff_counters_fd(bpf_map__fd(ff->skel->maps.ff_counters), c);
	out->passed = c[FF_CNT_PASSED];
	out->dropped_rate = c[FF_CNT_DROPPED_RATE];
	out->dropped_block = c[FF_CNT_DROPPED_BLOCK];
	out->blocks_added = atomic_load_explicit(&ff->blocks_added, memory_order_relaxed);
	out->sources_allowed = atomic_load_explicit(&ff->sources_allowed, memory_order_relaxed);
}

int flood_filter_list(struct flood_filter *ff, FILE *out)
{
	if (!ff)
		return 0;
	return ff_list_fd(bpf_map__fd(ff->skel->maps.ff_block), out);
}

int flood_filter_clear(struct flood_filter *ff, const struct sockaddr *addr)
{
	struct ff_key key;

	if (!ff)
		return -ENOENT;
	if (!ff_key_from_sockaddr(addr, &key))
		return -EAFNOSUPPORT;
	return ff_clear_fd(bpf_map__fd(ff->skel->maps.ff_block),
			   bpf_map__fd(ff->skel->maps.ff_strikes), &key);
}

/* ---- `kite filter ...` ---- */

/* The broker's pin directory: --pid's, or the only live one under root. */
static int ff_cli_find_dir(const char *root, long pid, char *dir, size_t len)
{
	struct dirent *d;
	DIR *dp;
	int found = 0;

	if (pid > 0) {
		snprintf(dir, len, "%s/%ld", root, pid);
		if (access(dir, F_OK)) {
			fprintf(stderr, "kite filter: no flood filter pinned at %s\n", dir);
			return -1;
		}
		return 0;
	}
	dp = opendir(root);
	if (!dp) {
		fprintf(stderr, "kite filter: no running broker with a flood filter (%s: %s)\n",
			root, strerror(errno));
		return -1;
	}
	while ((d = readdir(dp))) {
		char *endp;
		long p = strtol(d->d_name, &endp, 10);

		if (*endp || p <= 0 || (kill((pid_t)p, 0) && errno == ESRCH))
			continue;
		snprintf(dir, len, "%s/%ld", root, p);
		found++;
	}
	closedir(dp);
	if (found == 1)
		return 0;
	fprintf(stderr, found ? "kite filter: %d brokers under %s: choose one with --pid\n"
			      : "kite filter: no running broker with a flood filter (%d under %s)\n",
		found, root);
	return -1;
}

static int ff_cli_open(const char *dir, enum ff_pin which)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, ff_pin_names[which]);
	fd = bpf_obj_get(path);
	if (fd < 0)
		fprintf(stderr, "kite filter: %s: %s\n", path, strerror(-fd));
	return fd;
}

static int ff_cli_usage(void)
{
	fprintf(stderr, "usage: kite filter list|stats|clear ADDRESS [--pid PID] "
		"[--pin-root DIR]\n");
	return 2;
}

static int ff_cli_help(void)
{
	printf("Usage: kite filter list|stats|clear ADDRESS [--pid PID] [--pin-root DIR]\n"
	       "The running broker's XDP flood filter, through the maps it pins at\n"
	       "DIR/PID (DIR: %s):\n"
	       "  list           blocked sources and their remaining seconds\n"
	       "  stats          packets passed, dropped by the SYN rate, dropped blocked\n"
	       "  clear ADDRESS  unblock an IPv4/IPv6 source and forget its strikes\n"
	       "  --pid PID      the broker to look at, when several run\n"
	       "  --pin-root DIR where that broker pins its maps\n", FLOOD_FILTER_PIN_ROOT);
	return 0;
}

static int ff_cli_run(const char *cmd, const char *addr, const char *dir)
{
	int block_fd, strikes_fd, counters_fd, rc;
	struct ff_key key;
	uint64_t c[FF_CNT_MAX];

	if (!strcmp(cmd, "list")) {
		block_fd = ff_cli_open(dir, FF_PIN_BLOCK);
		if (block_fd < 0)
			return 1;
		rc = ff_list_fd(block_fd, stdout);
		close(block_fd);
		return rc < 0;
	}
	if (!strcmp(cmd, "stats")) {
		counters_fd = ff_cli_open(dir, FF_PIN_COUNTERS);
		if (counters_fd < 0)
			return 1;
		rc = ff_counters_fd(counters_fd, c);
		close(counters_fd);
		printf("passed %llu\ndropped_rate %llu\ndropped_block %llu\n",
		       (unsigned long long)c[FF_CNT_PASSED],
		       (unsigned long long)c[FF_CNT_DROPPED_RATE],
		       (unsigned long long)c[FF_CNT_DROPPED_BLOCK]);
		return rc < 0;
	}
	if (!ff_key_parse(addr, &key)) {
		fprintf(stderr, "kite filter: not an IPv4/IPv6 address: %s\n", addr);
		return 2;
	}
	block_fd = ff_cli_open(dir, FF_PIN_BLOCK);
	strikes_fd = block_fd < 0 ? -1 : ff_cli_open(dir, FF_PIN_STRIKES);
	if (strikes_fd < 0) {
		if (block_fd >= 0)
			close(block_fd);
		return 1;
	}
	rc = ff_clear_fd(block_fd, strikes_fd, &key);
	close(strikes_fd);
	close(block_fd);
	if (rc == -ENOENT)
		fprintf(stderr, "kite filter: %s is not blocked\n", addr);
	else if (rc)
		fprintf(stderr, "kite filter: clear %s: %s\n", addr, strerror(-rc));
	else
		printf("cleared %s\n", addr);
	return rc != 0;
}

int flood_filter_cli_main(int argc, char **argv)
{
	const char *root = FLOOD_FILTER_PIN_ROOT, *cmd = NULL, *addr = NULL;
	char dir[FF_DIR_MAX];
	long pid = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
			return ff_cli_help();
		if (!strcmp(argv[i], "--pid") && i + 1 < argc)
			pid = strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--pin-root") && i + 1 < argc)
			root = argv[++i];
		else if (!cmd)
			cmd = argv[i];
		else if (!addr)
			addr = argv[i];
		else
			return ff_cli_usage();
	}
	if (!cmd || (strcmp(cmd, "list") && strcmp(cmd, "stats") && strcmp(cmd, "clear")) ||
	    (!strcmp(cmd, "clear") != !!addr))
		return ff_cli_usage();
	libbpf_set_print(ff_libbpf_print);
	if (ff_cli_find_dir(root, pid, dir, sizeof(dir)))
		return 1;
	return ff_cli_run(cmd, addr, dir);
}
