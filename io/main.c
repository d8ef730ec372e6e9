/* kite: command line, config, signals. Usage follows mosquitto's:
 *   kite [-c FILE] [-p PORT] [-t] [-v] [--version] */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/signalfd.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "acl/acl.h"
#include "bpf/flood_filter.h"
#include "tools/cert.h"
#include "tools/kitedb.h"
#include "core/log.h"
#include "io/broker.h"
#include "io/msg.h"
#include "io/security.h"

struct options {
	const char *config_path;
	int port;
	bool test_only;
	bool verbose;
};

static void usage(FILE *f)
{
	fprintf(f,
		"kite version %s: MQTT 3.1.1/5.0 broker\n\n"
		"Usage: kite [-c config_file] [-p port] [-t] [-v]\n"
		"       kite COMMAND --help\n"
		" -c : read Mosquitto-style configuration from a file;\n"
		"      without one, listen on 127.0.0.1:1883 with anonymous access.\n"
		" -p : local-only mode on this port instead of 1883.\n"
		" -t : check the configuration and exit.\n"
		" -v : log everything to stderr.\n"
		" --version : print the version and exit.\n\n"
		"Commands (tools in the same binary):\n"
		" cert   : a private CA, server and client certificates, CRLs.\n"
		" passwd : password files, as mosquitto_passwd writes them.\n"
		" filter : the running XDP flood filter: list, stats, clear.\n"
		" db     : inspect a persistence directory or a mosquitto.db.\n\n"
		"Signals: SIGHUP reloads the configuration; SIGINT/SIGTERM stop.\n"
		"See kite(8) and kite.conf(5).\n",
		broker_version());
}

static int parse_args(int argc, char **argv, struct options *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-c") || !strcmp(a, "--config-file")) {
			if (++i == argc)
				return -1;
			o->config_path = argv[i];
		} else if (!strcmp(a, "-p") || !strcmp(a, "--port")) {
			if (++i == argc)
				return -1;
			char *end;
			long p = strtol(argv[i], &end, 10);
			if (*end || p < 1 || p > 65535)
				return -1;
			o->port = (int)p;
		} else if (!strcmp(a, "-t") || !strcmp(a, "--test-config")) {
			o->test_only = true;
		} else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
			o->verbose = true;
		} else if (!strcmp(a, "--version")) {
			printf("kite version %s\n", broker_version());
			exit(0);
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		} else {
			return -1;
		}
	}
	return 0;
}

/* The configuration the command line names, or the built-in one; on
 * failure err says which file, line and what is wrong (at start it goes
 * to stderr, on a reload to the broker's log). */
static int load_config(const struct options *o, struct kite_config *cfg,
		       char *err, size_t errlen)
{
	config_defaults(cfg);
	if (o->config_path && config_load(cfg, o->config_path, err, errlen) < 0)
		return -1;
	if (config_finalize(cfg, err, errlen) < 0)
		return -1;
	/* Like mosquitto -p: without configured listeners the broker stays in
	 * local-only mode, on that port. */
	if (o->port && cfg->local_only)
		cfg->listeners[0].port = (uint16_t)o->port;
	if (o->verbose) {
		cfg->log_type = KITE_LOG_ALL;
		cfg->log_dest |= KITE_LOGDEST_STDERR;
	}
	return 0;
}

/* systemd's readiness protocol (sd_notify(3)): a no-op unless systemd
 * started kite with Type=notify (NOTIFY_SOCKET set). */
static void notify(const char *state)
{
	sd_notify(0, state);
}

/* RELOADING=1 carries the time it began, as systemd 253's
 * Type=notify-reload requires; older systemd ignores the field. */
static void notify_reloading(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ull +
			   (unsigned long long)ts.tv_nsec / 1000u);
}

static void write_pid_file(const char *path)
{
	if (!path[0])
		return;
	FILE *f = fopen(path, "w");
	if (!f) {
		log_msg(KITE_LOG_ERR, "Error: unable to write pid file %s: %s",
			path, strerror(errno));
		return;
	}
	fprintf(f, "%ld\n", (long)getpid());
	fclose(f);
}

static void log_config_warnings(const struct kite_config *cfg)
{
	for (unsigned i = 0; i < cfg->warning_count; i++)
		log_msg(KITE_LOG_WARNING, "Warning: %s", cfg->warnings[i]);
}

static void reload_announce(struct broker *b)
{
	atomic_fetch_add_explicit(&b->reload_started, 1, memory_order_acq_rel);
}

/* The next SIGINT, SIGTERM or SIGHUP. A SIGHUP is counted in
 * reload_started before it stops being pending: the shards look at both
 * (shard_reload_coming), so no moment exists where a client reconnecting
 * right after the signal could be served under the old ACL. sigwait takes
 * the signal first, and a preemption on its way back from the kernel left
 * that moment open; a signalfd can be polled without taking anything.
 * sfd < 0 (no signalfd): sigwait, with that moment. */
static int next_signal(struct broker *b, int sfd, const sigset_t *set)
{
	bool counted = false;
	for (;;) {
		int sig;
		if (sfd < 0) {
			if (sigwait(set, &sig) != 0)
				continue;
		} else {
			struct pollfd p = {.fd = sfd, .events = POLLIN};
			if (poll(&p, 1, -1) < 0)
				continue;
			sigset_t pending;
			if (!counted && sigpending(&pending) == 0 &&
			    sigismember(&pending, SIGHUP) == 1) {
				reload_announce(b);
				counted = true;
			}
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				sig = (int)si.ssi_signo;
			else if (errno == EAGAIN || errno == EINTR ||
				 sigwait(set, &sig) != 0) /* unreadable */
				continue;
		}
		if (sig == SIGHUP && !counted)
			reload_announce(b);
		return sig;
	}
}

static void serve(struct broker *b, const struct options *o)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	for (;;) {
		/* A SIGHUP comes back counted, before the files are read: a
		 * client connecting after the signal must not be served under
		 * the old ACL. */
		int sig = next_signal(b, sfd, &set);
		if (sig != SIGHUP) {
			notify("STOPPING=1");
			log_msg(KITE_LOG_NOTICE, "kite version %s terminating",
				broker_version());
			if (sfd >= 0)
				close(sfd);
			return;
		}
		notify_reloading();
		struct kite_config *next = malloc(sizeof(*next));
		char err[KITE_CONFIG_ERR_MAX] = "configuration error";
		struct security *sec = NULL;
		if (next && load_config(o, next, err, sizeof(err)) == 0 &&
		    (sec = security_load(next, err, sizeof(err))))
			broker_reload(b, next, sec);
		else if (next)
			log_msg(KITE_LOG_ERR, "Reload failed: %s; keeping the "
				"running configuration.", err);
		else
			log_msg(KITE_LOG_ERR, "Reload failed: out of memory; "
				"keeping the running configuration.");
		/* Switched everywhere, or failed (the old files stay): nothing
		 * waits any more; the shards' tick pumps what was deferred. */
		atomic_store_explicit(&b->reload_done,
				      atomic_load_explicit(&b->reload_started,
							   memory_order_acquire),
				      memory_order_release);
		free(next);
		notify("READY=1");
	}
}

/* Takes all the kernel allows this process of `resource`: the soft limit
 * up to the hard one. */
static void raise_soft_limit(int resource)
{
	struct rlimit r;
	if (getrlimit(resource, &r) == 0 && r.rlim_cur < r.rlim_max) {
		r.rlim_cur = r.rlim_max;
		setrlimit(resource, &r);
	}
}

/* Every client is a descriptor (the soft limit is often 1024 while the
 * hard one is far higher). What happens at the limit is shard.c's
 * business. Kernels that charge io_uring's rings to RLIMIT_MEMLOCK cap how
 * many shards kite gets (broker_start). */
static void raise_limits(void)
{
	raise_soft_limit(RLIMIT_NOFILE);
	raise_soft_limit(RLIMIT_MEMLOCK);
	struct rlimit r;
	if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur != RLIM_INFINITY)
		log_msg(KITE_LOG_INFO, "Open file limit: %llu (about as many "
			"clients; beyond it new clients are refused).",
			(unsigned long long)r.rlim_cur);
}

int main(int argc, char **argv)
{
	/* Tools that share the binary: kite filter ... */
	if (argc > 1 && !strcmp(argv[1], "filter"))
		return flood_filter_cli_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "passwd"))
		return passwd_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "cert"))
		return cert_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "db"))
		return kitedb_main(argc - 1, argv + 1);
	struct options o = {0};
	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		return 1;
	}
	char err[KITE_CONFIG_ERR_MAX] = "out of memory";
	struct kite_config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg || load_config(&o, cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		free(cfg);
		return 1;
	}
	struct security *sec = security_load(cfg, err, sizeof(err));
	if (!sec) {
		fprintf(stderr, "%s\n", err);
		free(cfg);
		return 1;
	}
	if (o.test_only) {
		for (unsigned i = 0; i < cfg->warning_count; i++)
			fprintf(stderr, "Warning: %s\n", cfg->warnings[i]);
		printf("%s: configuration OK\n",
		       o.config_path ? o.config_path : "(built-in defaults)");
		security_free(sec);
		free(cfg);
		return 0;
	}
	log_configure(cfg);
	/* Signals go to the main thread's signalfd, never to a shard. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	log_msg(KITE_LOG_NOTICE, "kite version %s starting", broker_version());
	if (o.config_path)
		log_msg(KITE_LOG_NOTICE, "Config loaded from %s.", o.config_path);
	log_config_warnings(cfg);
	raise_limits();
	/* Before `user` drops root, as Mosquitto writes it. */
	write_pid_file(cfg->pid_file);
	struct broker b = {.cfg = cfg, .sec = sec};
	if (broker_start(&b) < 0) {
		log_msg(KITE_LOG_ERR, "Error: broker failed to start");
		if (cfg->pid_file[0])
			unlink(cfg->pid_file);
		free(b.cfg);
		security_free(b.sec);
		log_close();
		return 1;
	}
	/* Listening on every listener, shards running: clients may come. */
	notify("READY=1");
	serve(&b, &o);
	broker_stop(&b);
	if (b.cfg->pid_file[0])
		unlink(b.cfg->pid_file);
	free(b.cfg);
	security_free(b.sec);
	log_close();
	return 0;
}
