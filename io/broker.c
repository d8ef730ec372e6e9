/* Broker lifetime: shared state, shard threads, stop and reload. */
#include <grp.h>
#include <ifaddrs.h>
#include <pwd.h>
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <urcu-qsbr.h>

#include "bpf/flood_filter.h"
#include "core/log.h"
#include "core/gtrie.h"
#include "core/retain.h"
#include "io/broker.h"
#include "io/cluster.h"
#include "io/bridge.h"
#include "io/conn.h"
#include "io/handle.h"
#include "io/loop.h"
#include "io/msg.h"
#include "io/persist.h"
#include "io/recover.h"
#include "io/route.h"
#include "io/security.h"
#include "io/session.h"
#include "io/shard.h"
#include "io/share.h"
#include "io/version.h"


const char *broker_version(void)
{
	return KITE_VERSION;
}

static void reg_entry_free_cb(struct htab_link *l)
{
	free(htab_entry(l, struct client_entry, link));
}

static int broker_alloc(struct broker *b)
{
	for (unsigned li = 0; li < KITE_LISTENERS_MAX; li++)
		b->listen_lock_fds[li] = -1;
	pthread_mutex_init(&b->reg_lock, NULL);
	pthread_mutex_init(&b->ctl_lock, NULL);
	size_t rings = (size_t)(b->nshards + 1) * b->nshards;
	b->xrings = aligned_alloc(64, sizeof(struct xring) * rings);
	if (b->xrings)
		for (size_t i = 0; i < rings; i++) {
			atomic_init(&b->xrings[i].head, 0);
			atomic_init(&b->xrings[i].tail, 0);
		}
	b->shards = calloc(b->nshards, sizeof(struct shard));
	b->gtrie = gtrie_new();
	b->retained = retain_new(msg_release_cb);
	if (!b->xrings || !b->shards || !b->gtrie || !b->retained)
		return -1;
	b->ctl_ring_up = io_uring_queue_init(8, &b->ctl_ring, 0) == 0;
	return b->ctl_ring_up ? 0 : -1;
}

/* As bridge_new decides it: a CA or a PSK means TLS to the remote. */
static bool broker_bridge_tls(const struct kite_bridge_cfg *k)
{
	return k->cafile[0] || k->capath[0] || k->psk[0];
}

static void broker_log_listeners(struct broker *b)
{
	const struct kite_config *cfg = b->cfg;
	if (cfg->local_only)
		log_msg(KITE_LOG_NOTICE,
			"Starting in local only mode. Connections will only be possible from clients running on this machine.");
	bool any_tls = false;
	enum tls_kernel_ktls support = TLS_KERNEL_NO_ULP;
	for (unsigned i = 0; i < cfg->listener_count; i++)
		any_tls |= config_listener_tls(&cfg->listeners[i]);
	for (unsigned i = 0; i < cfg->bridge_count; i++)
		any_tls |= broker_bridge_tls(&cfg->bridges[i]);
	if (any_tls)
		support = tls_kernel_ktls_support();
	bool ktls = support != TLS_KERNEL_NO_ULP;
	b->ktls = ktls;
	b->ktls_rekey = support == TLS_KERNEL_REKEY;
	if (ktls)
		log_msg(KITE_LOG_NOTICE, "%s",
			b->ktls_rekey
				? "Kernel TLS: TLS 1.3 key updates are followed in the kernel."
				: "Kernel TLS: this kernel cannot replace TLS keys (Linux 6.14 "
				  "or later can): a client's TLS 1.3 KeyUpdate will close "
				  "its connection.");
	for (unsigned i = 0; i < cfg->listener_count; i++) {
		const struct kite_listener_cfg *l = &cfg->listeners[i];
		const char *mode = l->protocol == LISTENER_PROTO_METRICS
					   ? "metrics: Prometheus text at /metrics"
				   : !config_listener_tls(l) ? "plain TCP"
				   : ktls ? "TLS: handshake in userspace (OpenSSL), "
					    "records in the kernel (kTLS)"
					  : "TLS in userspace (OpenSSL): this kernel "
					    "has no TLS ULP, so no kTLS";
		log_msg(KITE_LOG_NOTICE, "Opening %slisten socket on %s:%u (%s, %u shard%s).",
			l->protocol == LISTENER_PROTO_WEBSOCKETS ? "websockets " : "",
			l->bind_address[0] ? l->bind_address : "*", l->port,
			mode, b->nshards, b->nshards == 1 ? "" : "s");
	}
	/* Once here, not at every reconnection. */
	for (unsigned i = 0; i < cfg->bridge_count; i++)
		if (broker_bridge_tls(&cfg->bridges[i]))
			log_msg(KITE_LOG_NOTICE, "Bridge %s: %s", cfg->bridges[i].name,
				ktls ? "TLS: handshake in userspace (OpenSSL), "
				       "records in the kernel (kTLS)"
				     : "TLS in userspace (OpenSSL): this kernel "
				       "has no TLS ULP, so no kTLS");
}

/* The XDP filter on the configured interfaces, for every listener port.
 * Without it kite serves anyway, unless the config requires it. */
static int broker_load_flood_filter(struct broker *b)
{
	const struct kite_config *cfg = b->cfg;
	if (!cfg->flood_filter_iface_count)
		return 0;
	const char *ifaces[KITE_FLOOD_IFACES_MAX];
	uint16_t ports[FLOOD_FILTER_PORTS_MAX];
	unsigned np = 0;
	for (unsigned i = 0; i < cfg->flood_filter_iface_count; i++)
		ifaces[i] = cfg->flood_filter_ifaces[i];
	for (unsigned i = 0; i < cfg->listener_count && np < FLOOD_FILTER_PORTS_MAX; i++) {
		if (cfg->listeners[i].protocol == LISTENER_PROTO_METRICS)
			continue; /* a scraper is not a client to strike */
		unsigned j = 0;
		while (j < np && ports[j] != cfg->listeners[i].port)
			j++;
		if (j == np)
			ports[np++] = cfg->listeners[i].port;
	}
	struct flood_filter_opts o = {
		.ifaces = ifaces, .n_ifaces = cfg->flood_filter_iface_count,
		.ports = ports, .n_ports = np,
		.syn_rate = cfg->flood_filter_syn_rate,
		.syn_burst = cfg->flood_filter_syn_burst,
		.strikes = cfg->flood_filter_strikes,
		.block_seconds = cfg->flood_filter_block_seconds,
	};
	char err[256] = "";
	b->flood = flood_filter_load(&o, err, sizeof(err));
	if (b->flood) {
		log_msg(KITE_LOG_NOTICE, "Flood filter attached (XDP) on %u interface(s), %u port(s).",
			o.n_ifaces, np);
		if (err[0])
			log_msg(KITE_LOG_WARNING, "Flood filter: maps not pinned, "
				"`kite filter` cannot reach it: %s", err);
		return 0;
	}
	log_msg(cfg->flood_filter_required ? KITE_LOG_ERR : KITE_LOG_WARNING,
		"Flood filter not loaded: %s%s", err,
		cfg->flood_filter_required ? "" : "; serving without it.");
	return cfg->flood_filter_required ? -1 : 0;
}

/* ---- listening sockets ---------------------------------------------------
 *
 * Each shard has its own socket per listener (SO_REUSEPORT: the kernel
 * spreads new clients over the shards). SO_REUSEPORT would also let a
 * second kite, or anything else of the same user, join the group and
 * take half the clients, so the port is first claimed without it. */

/* bind_interface: the interface's first address of the wanted family
 * (IPv4 unless socket_domain ipv6), as Mosquitto binds it; 0 if none. */
static socklen_t interface_addr(const struct kite_listener_cfg *l,
				struct sockaddr_storage *ss)
{
	struct ifaddrs *ifs, *i;
	int want = l->socket_domain == KITE_DOMAIN_IPV6 ? AF_INET6 : AF_INET;
	socklen_t len = 0;
	if (getifaddrs(&ifs) < 0)
		return 0;
	for (i = ifs; i && !len; i = i->ifa_next) {
		if (!i->ifa_addr || strcmp(i->ifa_name, l->bind_interface) ||
		    i->ifa_addr->sa_family != want)
			continue;
		len = want == AF_INET ? sizeof(struct sockaddr_in)
				      : sizeof(struct sockaddr_in6);
		memcpy(ss, i->ifa_addr, len);
		((struct sockaddr_in *)ss)->sin_port = htons(l->port);
	}
	freeifaddrs(ifs);
	return len;
}

static socklen_t listener_addr(const struct kite_listener_cfg *l,
			       struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (l->bind_interface[0])
		return interface_addr(l, ss); /* takes priority (man page) */
	const char *host = l->bind_address[0] ? l->bind_address : NULL;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	if ((host && inet_pton(AF_INET, host, &a4->sin_addr) == 1) ||
	    (!host && l->socket_domain == KITE_DOMAIN_IPV4)) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(l->port);
		return sizeof(*a4);
	}
	if (host && inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
		return 0;
	a6->sin6_family = AF_INET6;
	a6->sin6_port = htons(l->port);
	if (!host)
		a6->sin6_addr = in6addr_any;
	return sizeof(*a6);
}

/* A bound socket on l's address, listening if `listen_too`; -1 and errno. */
static int listener_socket(const struct kite_listener_cfg *l, bool reuseport,
			   bool listen_too)
{
	struct sockaddr_storage ss;
	socklen_t alen = listener_addr(l, &ss);
	if (!alen) {
		errno = EINVAL;
		return -1;
	}
	/* Non-blocking: io_uring polls it, and a shard's own accept4 (when
	 * it turns clients away at the file limit) must never wait. */
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	int one = 1, zero = 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	/* Both families on "::" unless socket_domain ipv6 says IPv6 only. */
	int v6only = l->socket_domain == KITE_DOMAIN_IPV6 ? one : zero;
	if (ss.ss_family == AF_INET6 && !l->bind_address[0])
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
	if (bind(fd, (struct sockaddr *)&ss, alen) < 0 ||
	    (listen_too && listen(fd, 4096) < 0)) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Listening sockets outlive a killed broker by a few milliseconds (its
 * io_uring is torn down after it exits): a restart waits that long. */
#define LISTEN_CLAIM_WAIT_MS 2000

/* Two kites started together could both find the port free before
 * either listens, then share it through SO_REUSEPORT. Each also binds an
 * abstract unix socket named for the address, which only one process can
 * hold and which the kernel frees with the process, even after kill -9
 * (its listening sockets, held by io_uring, linger). -1 and errno
 * (EADDRINUSE: another kite has it). */
static int listener_lock(const struct kite_listener_cfg *l)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	int n = snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1,
			 "kite-listen-%s:%u",
			 l->bind_address[0] ? l->bind_address : "*", l->port);
	assert(n > 0 && (size_t)n < sizeof(a.sun_path) - 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&a,
		 (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n)) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* l's address is this kite's, and nobody else listens on it: a bind
 * without SO_REUSEPORT succeeds. The lock's fd, or -1 with errno
 * (EADDRINUSE: someone does). */
static int listener_claim(const struct kite_listener_cfg *l)
{
	int lock = -1;
	for (unsigned waited = 0;; waited += 20) {
		if (lock < 0)
			lock = listener_lock(l);
		int fd = lock < 0 ? -1 : listener_socket(l, false, false);
		if (fd >= 0) {
			close(fd);
			return lock;
		}
		if (errno != EADDRINUSE || waited >= LISTEN_CLAIM_WAIT_MS) {
			int e = errno;
			if (lock >= 0)
				close(lock);
			errno = e;
			return -1;
		}
		usleep(20 * 1000);
	}
}

static int broker_listen(struct broker *b)
{
	for (unsigned li = 0; li < b->cfg->listener_count; li++) {
		const struct kite_listener_cfg *l = &b->cfg->listeners[li];
		b->listen_lock_fds[li] = listener_claim(l);
		int rc = b->listen_lock_fds[li] < 0 ? -1 : 0;
		for (unsigned i = 0; i < b->nshards && rc == 0; i++) {
			int fd = listener_socket(l, true, true);
			b->shards[i].listen_fds[li] = fd;
			rc = fd < 0 ? -1 : 0;
		}
		if (rc < 0) {
			log_msg(KITE_LOG_ERR, "Error: unable to listen on %s:%u: %s",
				l->bind_address[0] ? l->bind_address : "*",
				l->port, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* `user`: started as root, become that user and its groups. Mosquitto's
 * rules: "root" stays root; the default "mosquitto", when that user does
 * not exist, becomes "nobody"; any other missing user is an error. */
static int broker_drop_privileges(const struct kite_config *cfg)
{
	if (geteuid() != 0 || !strcmp(cfg->user, "root"))
		return 0;
	const char *name = cfg->user;
	struct passwd *pw = getpwnam(name);
	if (!pw && !strcmp(name, "mosquitto")) {
		name = "nobody";
		pw = getpwnam(name);
	}
	if (!pw) {
		log_msg(KITE_LOG_ERR, "Error: Unable to drop privileges to '%s' "
			"because this user does not exist.", cfg->user);
		return -1;
	}
	/* Groups first: after setuid there is no right to change them. */
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		log_msg(KITE_LOG_ERR, "Error: Unable to drop privileges to '%s': %s",
			name, strerror(errno));
		return -1;
	}
	log_msg(KITE_LOG_INFO, "Running as user '%s'.", name);
	return 0;
}

/* ---- the layers, wired ---------------------------------------------------- */

/* Calls go down the layers (docs/ENGINE.md, "Layers"). Where a layer
 * must reach one above it (a connection's packet to its handler, a will
 * to routing...), it calls through a table that the broker, which sits
 * above them all, fills here once before any shard runs. */
static const struct conn_upcalls conn_up = {
	.handlers = handle_table,
	.bridge_on_packet = bridge_on_packet,
	.bridge_on_tls_ready = bridge_on_tls_ready,
	.bridge_on_close = bridge_on_close,
	.persist_gated = persist_gated,
	.persist_will = persist_will,
	.session_timer_at = session_timer_at,
	.session_on_disconnect = session_on_disconnect,
	.route_publish = route_publish,
	.route_retained = route_retained,
};

static const struct persist_upcalls persist_up = {
	.session_pump = session_pump,
};

static const struct share_upcalls share_up = {
	.session_deliver = session_deliver,
	.session_may = session_may,
	.cluster_share = cluster_share,
};

static const struct session_upcalls session_up = {
	.route_publish = route_publish,
	.bridge_deliver = bridge_deliver,
	.cluster_interest = cluster_interest,
	.cluster_session_save = cluster_session_save,
};

static const struct route_upcalls route_up = {
	.cluster_publish = cluster_publish,
};

static const struct cluster_upcalls cluster_up = {
	.connect_resume = loop_connect_resume,
};

void broker_wire(void)
{
	cluster_set_upcalls(&cluster_up);
	conn_set_upcalls(&conn_up);
	persist_set_upcalls(&persist_up);
	share_set_upcalls(&share_up);
	session_set_upcalls(&session_up);
	route_set_upcalls(&route_up);
}

/* Gives back what broker_start built once no shard runs: after
 * broker_stop, and after a start that failed part-way (`inited` shards
 * had loop_init), so that a refused start (port taken, persistence
 * unreadable) leaves nothing held, under a leak checker too. */
static void broker_free(struct broker *b, unsigned inited)
{
	recover_stop();
	/* Tearing sessions down updates the global trie, whose writers must
	 * be registered RCU threads; no shard is left to read it. */
	rcu_register_thread();
	for (unsigned i = 0; i < inited; i++)
		loop_fini(&b->shards[i]);
	if (b->shards && b->xrings)
		loop_discard_pending(b);
	cluster_free(b);
	rcu_barrier_qsbr();
	retain_free(b->retained);
	free(b->bridge_recovered);
	gtrie_free(b->gtrie);
	rcu_barrier_qsbr();
	rcu_unregister_thread();
	htab_fini(&b->reg, reg_entry_free_cb);
	flood_filter_unload(b->flood);
	for (unsigned li = 0; li < KITE_LISTENERS_MAX; li++)
		if (b->listen_lock_fds[li] >= 0)
			close(b->listen_lock_fds[li]);
	free(b->shards);
	free(b->xrings);
	if (b->ctl_ring_up)
		io_uring_queue_exit(&b->ctl_ring);
}

/* Shard `idx` got no io_uring for want of memory (LOOP_INIT_NO_RING_MEMORY).
 * Kernels that charge rings to RLIMIT_MEMLOCK (Linux 6.18 does) count every
 * process of the user against one budget, 8 MiB by default: about 15
 * shards. With the shard count left to kite it runs with the shards it has
 * rather than not at all, and says so; a count the operator set is
 * refused. Returns true when the start goes on with idx shards. */
static bool broker_ring_memory_short(struct broker *b, unsigned idx)
{
	char limit[32] = "unknown";
	struct rlimit r;
	if (getrlimit(RLIMIT_MEMLOCK, &r) == 0) {
		if (r.rlim_cur == RLIM_INFINITY)
			snprintf(limit, sizeof(limit), "unlimited");
		else
			snprintf(limit, sizeof(limit), "%llu KiB",
				 (unsigned long long)r.rlim_cur / 1024u);
	}
	char user[64];
	const struct passwd *pw = getpwuid(geteuid());
	if (pw)
		snprintf(user, sizeof(user), "'%s'", pw->pw_name);
	else
		snprintf(user, sizeof(user), "%u", (unsigned)geteuid());
	char why[256];
	snprintf(why, sizeof(why),
		 "the kernel charges each shard's io_uring (about 0.5 MiB) to "
		 "the locked memory of user %s, shared by all its processes "
		 "(RLIMIT_MEMLOCK %s)",
		 user, limit);
	if (idx > 0 && !b->cfg->shards) {
		log_msg(KITE_LOG_WARNING,
			"Running %u of %u shards (one per CPU): shard %u got no "
			"io_uring (Cannot allocate memory): %s. Raise that limit "
			"(systemd: LimitMEMLOCK=; limits.conf: memlock) for a "
			"shard per CPU.",
			idx, b->nshards, idx, why);
		b->nshards = idx;
		return true;
	}
	log_msg(KITE_LOG_ERR,
		"Error: shard %u: io_uring setup failed: Cannot allocate memory: "
		"%s. Raise that limit (systemd: LimitMEMLOCK=; limits.conf: "
		"memlock) or set `shards` lower.",
		idx, why);
	return false;
}

int broker_start(struct broker *b)
{
	broker_wire();
	b->nshards = config_shard_count(b->cfg);
	b->nshards_asked = b->nshards;
	assert(b->nshards >= 1 && b->nshards <= KITE_SHARDS_MAX);
	b->start_s = (uint64_t)time(NULL);
	unsigned inited = 0;
	if (broker_alloc(b) < 0) {
		log_msg(KITE_LOG_ERR, "Error: out of memory at startup");
		goto fail;
	}
	/* Before anything is sized by the shard count but the rings, which
	 * fit any smaller count: the kernel may give fewer shards. */
	for (; inited < b->nshards; inited++) {
		int rc = loop_init(&b->shards[inited], b, inited);
		if (rc == 0)
			continue;
		loop_fini(&b->shards[inited]);
		if (rc == LOOP_INIT_NO_RING_MEMORY &&
		    broker_ring_memory_short(b, inited))
			break;
		goto fail;
	}
	broker_log_listeners(b);
	/* The port first: a second kite on the same config stops there,
	 * before it touches the first one's persistence files. */
	if (broker_listen(b) < 0)
		goto fail;
	if (broker_load_flood_filter(b) < 0)
		goto fail;
	/* Sockets bound, keys loaded, XDP attached: what needed root is done.
	 * The persistence files are the user's (Mosquitto's order too). */
	if (broker_drop_privileges(b->cfg) < 0)
		goto fail;
	/* Before the sessions are revived: their subscriptions are the
	 * node's interest on NATS. */
	if (cluster_start(b) < 0)
		goto fail;
	if (recover_start(b) < 0) {
		cluster_stop(b);
		goto fail;
	}
	pthread_barrier_init(&b->started, NULL, b->nshards + 1);
	for (unsigned i = 0; i < b->nshards; i++)
		if (loop_start(&b->shards[i]) < 0) {
			log_msg(KITE_LOG_ERR, "Error: cannot start shard %u", i);
			abort(); /* the barrier would wait forever */
		}
	pthread_barrier_wait(&b->started);
	return 0;
fail:
	broker_free(b, inited);
	return -1;
}

void broker_stop(struct broker *b)
{
	cluster_stop(b);
	for (unsigned i = 0; i < b->nshards; i++)
		shard_post_from_main(b, i, (struct xitem){XK_STOP, NULL});
	for (unsigned i = 0; i < b->nshards; i++)
		pthread_join(b->shards[i].thread, NULL);
	broker_free(b, b->nshards);
	pthread_barrier_destroy(&b->started);
}

static bool listeners_equal(const struct kite_config *a,
			    const struct kite_config *b)
{
	if (a->listener_count != b->listener_count)
		return false;
	for (unsigned i = 0; i < a->listener_count; i++)
		if (a->listeners[i].port != b->listeners[i].port ||
		    strcmp(a->listeners[i].bind_address, b->listeners[i].bind_address))
			return false;
	return true;
}

/* Swaps the config snapshot: every shard switches on its next turn and
 * says so; the old snapshot is freed after that and a grace period. */
void broker_reload(struct broker *b, const struct kite_config *next,
		   struct security *sec)
{
	struct kite_config *cfg = malloc(sizeof(*cfg));
	if (!cfg) {
		log_msg(KITE_LOG_ERR, "Reload failed: out of memory");
		security_free(sec);
		return;
	}
	*cfg = *next;
	if (!listeners_equal(b->cfg, cfg)) {
		log_msg(KITE_LOG_WARNING,
			"Listener changes need a restart; keeping the current listeners.");
		memcpy(cfg->listeners, b->cfg->listeners, sizeof(cfg->listeners));
		cfg->listener_count = b->cfg->listener_count;
		cfg->local_only = b->cfg->local_only;
	}
	if (config_shard_count(cfg) != b->nshards_asked)
		log_msg(KITE_LOG_WARNING, "A new shard count needs a restart.");
	cfg->shards = b->nshards;
	struct kite_config *old = b->cfg;
	struct security *old_sec = b->sec;
	struct snapshot snap = {cfg, sec,
				atomic_load_explicit(&b->reload_started,
						     memory_order_acquire)};
	atomic_store(&b->reload_acks, 0);
	b->cfg = cfg;
	b->sec = sec;
	for (unsigned i = 0; i < b->nshards; i++)
		shard_post_from_main(b, i, (struct xitem){XK_RELOAD, &snap});
	while (atomic_load(&b->reload_acks) < b->nshards)
		usleep(1000);
	/* Every shard has switched; a grace period later nothing reads the
	 * old snapshot (identities hold their own references). */
	synchronize_rcu_qsbr();
	free(old);
	security_free(old_sec);
	log_configure(cfg);
	log_msg(KITE_LOG_NOTICE, "Reloaded configuration from %s.",
		cfg->path[0] ? cfg->path : "(built-in defaults)");
}
