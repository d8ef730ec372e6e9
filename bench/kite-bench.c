/* kite-bench: MQTT load generator. Usage: kite-bench --help.
 *
 * One run is one scenario against one broker:
 *   setup    subscribers connect and subscribe, then publishers connect
 *            (a bounded number of connects in flight at a time);
 *   warmup   publishing starts, nothing is measured;
 *   measure  the window: deliveries, latencies, the broker's CPU time
 *            (/proc/PID/stat), our own CPU time;
 *   drain    publishing stops; wait until every expected delivery and ack
 *            arrived, or nothing moved for a while;
 *   verify   per (subscriber, publisher): lost, duplicated, reordered.
 * Output: one JSON line, then one human line, on stdout. Exit status 0 when
 * delivery was verified, 1 when it was not, 2 for bad usage or setup. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"

static volatile sig_atomic_t timed_out;

static void on_alarm(int sig)
{
	(void)sig;
	timed_out = 1;
}

void kb_error(struct kb *kb, const char *fmt, ...)
{
	va_list ap;
	char line[160];
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (!kb->o.quiet)
		fprintf(stderr, "kite-bench: %s\n", line);
	if (kb->nerrors < KB_ERRORS_MAX)
		memcpy(kb->errors[kb->nerrors++], line, sizeof(line));
}

/* ---- options ----------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
"usage: kite-bench [options]\n"
"  --port P[,P...]      broker port(s) on 127.0.0.1 (required); connections\n"
"                       are spread over them (more ports, more source ports)\n"
"  --topology T         fanout | fanin | p2p | idle | storm   (fanout)\n"
"  --pubs N             publishers (fanout, fanin)          (1)\n"
"  --subs N             subscribers (fanout, fanin)         (1)\n"
"  --pairs N            p2p: N publishers and N subscribers\n"
"  --conns N            idle: connections to hold; storm: connections in\n"
"                       flight, each cycling connect, (TLS handshake),\n"
"                       CONNECT, SUBSCRIBE, DISCONNECT, broker closes\n"
"  --qos Q              0, 1 or 2                           (0)\n"
"  --mqtt V             3.1.1 or 5                          (3.1.1)\n"
"  --payload B          payload bytes, >= %d                (64)\n"
"  --rate R             total publishes/s; 0 = saturation   (0)\n"
"  --window W           per publisher: messages not yet delivered to every\n"
"                       subscriber (and, QoS>0, not yet acked)  (32)\n"
"  --max-outstanding D  deliveries in flight over all publishers (65536)\n"
"  --burst K            saturation: messages per publisher per send   (1)\n"
"  --poll-us U          saturation: at least U us between polls     (0)\n"
"  --busy-poll          never sleep while publishing or draining; idle\n"
"                       spinning is timed and left out of the work figure\n"
"  --warmup S --duration S --drain S --setup S --hold S   (1 5 10 60 2)\n"
"  --stall S            saturation: no delivery for S seconds forgives the\n"
"                       in-flight count (QoS 0 drops)      (1)\n"
"  --timeout S          hard limit for the whole run        (300)\n"
"  --broker-pid PID     read its CPU time and RSS from /proc\n"
"  --connect-concurrency N  connects in flight during setup  (64)\n"
"  --keepalive S        MQTT keepalive; PINGREQ at S/2      (60)\n"
"  --persistent         persistent sessions: clean session 0 (3.1.1), clean\n"
"                       start 0 + session expiry (5) for every client, under\n"
"                       the run's client ids (kbPID-sN, kbPID-pN); a CONNACK\n"
"                       with session present fails the run (fanout, fanin,\n"
"                       p2p, idle)\n"
"  --session-expiry S   MQTT 5 session expiry with --persistent (3600)\n"
"  --gen-bound PCT      flag the result generator-bound above (90)\n"
"  --name NAME          scenario name in the output\n"
"  --tls[=on|off]       TLS over every connection (OpenSSL, non-blocking)\n"
"  --cafile F           verify the server certificate (and 127.0.0.1) with F\n"
"  --cert F --key F     one client certificate for every connection (mTLS)\n"
"  --cert-dir DIR       per-client certificates DIR/clients/PREFIXn.pem/.key,\n"
"                       n = 1.., one per new connection, round-robin\n"
"  --cert-prefix P      (dev-)   --cert-count N  (all found)\n"
"  --tls-version V      1.2 or 1.3 (default: either, 1.3 negotiated)\n"
"  --tls-resume         every new connection offers the session ticket of the\n"
"                       last one with its client identity (default: off, a\n"
"                       full handshake each time)\n"
"  --ws                 MQTT over WebSockets (RFC 6455, subprotocol mqtt,\n"
"                       GET /mqtt; wss:// with --tls): one masked binary\n"
"                       frame per packet out, any framing in\n"
"  --uring[=on|off]     plain TCP: a turn's sends leave through io_uring,\n"
"                       one io_uring_enter for all connections    (on)\n"
"  --quiet              no diagnostics on stderr\n",
		KB_PAYLOAD_MIN);
}

static int parse_ports(struct kb_opts *o, const char *s)
{
	o->nports = 0;
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s", s);
	char *save = NULL;
	for (char *t = strtok_r(tmp, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		long p = strtol(t, NULL, 10);
		if (p <= 0 || p > 65535 || o->nports == KB_PORTS_MAX)
			return -1;
		o->ports[o->nports++] = (uint16_t)p;
	}
	return o->nports ? 0 : -1;
}

static int parse_opts(struct kb_opts *o, int argc, char **argv)
{
	enum {
		O_PORT = 256, O_TOPO, O_PUBS, O_SUBS, O_PAIRS, O_CONNS, O_QOS,
		O_MQTT, O_PAYLOAD, O_RATE, O_WINDOW, O_MAXOUT, O_WARMUP,
		O_DURATION, O_DRAIN, O_SETUP, O_HOLD, O_STALL, O_TIMEOUT,
		O_BPID, O_CONC, O_KA, O_GENB, O_NAME, O_QUIET, O_HOST, O_TLS,
		O_BURST, O_POLLUS, O_BUSY, O_HELP, O_CAFILE, O_CERT, O_KEY,
		O_CERTDIR, O_CERTPFX, O_CERTCNT, O_TLSVER, O_PERSIST, O_EXPIRY, O_WS,
		O_RESUME, O_URING,
	};
	static const struct option lo[] = {
		{"port", 1, 0, O_PORT},	      {"topology", 1, 0, O_TOPO},
		{"pubs", 1, 0, O_PUBS},	      {"subs", 1, 0, O_SUBS},
		{"pairs", 1, 0, O_PAIRS},     {"conns", 1, 0, O_CONNS},
		{"qos", 1, 0, O_QOS},	      {"mqtt", 1, 0, O_MQTT},
		{"payload", 1, 0, O_PAYLOAD}, {"rate", 1, 0, O_RATE},
		{"window", 1, 0, O_WINDOW},   {"max-outstanding", 1, 0, O_MAXOUT},
		{"warmup", 1, 0, O_WARMUP},   {"duration", 1, 0, O_DURATION},
		{"drain", 1, 0, O_DRAIN},     {"setup", 1, 0, O_SETUP},
		{"hold", 1, 0, O_HOLD},	      {"stall", 1, 0, O_STALL},
		{"timeout", 1, 0, O_TIMEOUT}, {"broker-pid", 1, 0, O_BPID},
		{"connect-concurrency", 1, 0, O_CONC},
		{"keepalive", 1, 0, O_KA},    {"gen-bound", 1, 0, O_GENB},
		{"name", 1, 0, O_NAME},	      {"quiet", 0, 0, O_QUIET},
		{"host", 1, 0, O_HOST},	      {"tls", 2, 0, O_TLS},
		{"cafile", 1, 0, O_CAFILE},   {"cert", 1, 0, O_CERT},
		{"key", 1, 0, O_KEY},	      {"cert-dir", 1, 0, O_CERTDIR},
		{"cert-prefix", 1, 0, O_CERTPFX},
		{"cert-count", 1, 0, O_CERTCNT},
		{"tls-version", 1, 0, O_TLSVER},
		{"tls-resume", 0, 0, O_RESUME},
		{"burst", 1, 0, O_BURST},     {"poll-us", 1, 0, O_POLLUS},
		{"busy-poll", 0, 0, O_BUSY},
		{"persistent", 0, 0, O_PERSIST},
		{"session-expiry", 1, 0, O_EXPIRY},
		{"ws", 0, 0, O_WS},
		{"uring", 2, 0, O_URING},
		{"help", 0, 0, O_HELP},	      {0, 0, 0, 0},
	};
	memset(o, 0, sizeof(*o));
	snprintf(o->name, sizeof(o->name), "run");
	snprintf(o->host, sizeof(o->host), "127.0.0.1");
	o->topo = KB_TOPO_FANOUT;
	o->pubs = 1;
	o->subs = 1;
	o->version = MQTT_V311;
	o->payload = 64;
	o->window = 32;
	o->max_outstanding = 65536;
	o->burst = 1;
	o->warmup_s = 1;
	o->duration_s = 5;
	o->drain_s = 10;
	o->setup_s = 60;
	o->hold_s = 2;
	o->stall_s = 1;
	o->timeout_s = 300;
	o->connect_concurrency = 64;
	o->keepalive_s = 60;
	o->gen_bound_pct = 90;
	o->session_expiry_s = 3600;
	o->uring = true;
	int ch;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (ch) {
		case O_PORT:
			if (parse_ports(o, optarg) != 0)
				return -1;
			break;
		case O_TOPO:
			if (!strcmp(optarg, "fanout"))
				o->topo = KB_TOPO_FANOUT;
			else if (!strcmp(optarg, "fanin"))
				o->topo = KB_TOPO_FANIN;
			else if (!strcmp(optarg, "p2p"))
				o->topo = KB_TOPO_P2P;
			else if (!strcmp(optarg, "idle"))
				o->topo = KB_TOPO_IDLE;
			else if (!strcmp(optarg, "storm"))
				o->topo = KB_TOPO_STORM;
			else
				return -1;
			break;
		case O_PUBS: o->pubs = (uint32_t)strtoul(optarg, 0, 10); break;
		case O_SUBS: o->subs = (uint32_t)strtoul(optarg, 0, 10); break;
		case O_PAIRS:
			o->pubs = o->subs = (uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_CONNS: o->idle = (uint32_t)strtoul(optarg, 0, 10); break;
		case O_QOS: o->qos = (uint8_t)strtoul(optarg, 0, 10); break;
		case O_MQTT:
			if (!strcmp(optarg, "5") || !strcmp(optarg, "5.0"))
				o->version = MQTT_V5;
			else if (!strcmp(optarg, "3.1.1") ||
				 !strcmp(optarg, "4") || !strcmp(optarg, "3"))
				o->version = MQTT_V311;
			else
				return -1;
			break;
		case O_PAYLOAD:
			o->payload = (uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_RATE: o->rate = strtod(optarg, 0); break;
		case O_WINDOW:
			o->window = (uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_MAXOUT:
			o->max_outstanding = strtoull(optarg, 0, 10);
			break;
		case O_BUSY: o->busy_poll = true; break;
		case O_POLLUS:
			o->poll_us = (uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_BURST: o->burst = (uint32_t)strtoul(optarg, 0, 10); break;
		case O_WARMUP: o->warmup_s = strtod(optarg, 0); break;
		case O_DURATION: o->duration_s = strtod(optarg, 0); break;
		case O_DRAIN: o->drain_s = strtod(optarg, 0); break;
		case O_SETUP: o->setup_s = strtod(optarg, 0); break;
		case O_HOLD: o->hold_s = strtod(optarg, 0); break;
		case O_STALL: o->stall_s = strtod(optarg, 0); break;
		case O_TIMEOUT: o->timeout_s = strtod(optarg, 0); break;
		case O_BPID: o->broker_pid = (pid_t)strtol(optarg, 0, 10); break;
		case O_CONC:
			o->connect_concurrency =
				(uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_KA:
			o->keepalive_s = (uint16_t)strtoul(optarg, 0, 10);
			break;
		case O_GENB: o->gen_bound_pct = strtod(optarg, 0); break;
		case O_NAME:
			snprintf(o->name, sizeof(o->name), "%s", optarg);
			break;
		case O_QUIET: o->quiet = true; break;
		case O_HOST:
			snprintf(o->host, sizeof(o->host), "%s", optarg);
			break;
		case O_TLS:
			if (!optarg || !strcmp(optarg, "on"))
				o->tls = true;
			else if (!strcmp(optarg, "off"))
				o->tls = false;
			else
				return -1;
			break;
		case O_CAFILE: o->cafile = optarg; break;
		case O_CERT: o->cert = optarg; break;
		case O_KEY: o->key = optarg; break;
		case O_CERTDIR: o->cert_dir = optarg; break;
		case O_CERTPFX: o->cert_prefix = optarg; break;
		case O_CERTCNT:
			o->cert_count = (uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_TLSVER: o->tls_version = optarg; break;
		case O_RESUME: o->tls_resume = true; break;
		case O_PERSIST: o->persistent = true; break;
		case O_WS: o->ws = true; break;
		case O_URING:
			if (!optarg || !strcmp(optarg, "on"))
				o->uring = true;
			else if (!strcmp(optarg, "off"))
				o->uring = false;
			else
				return -1;
			break;
		case O_EXPIRY:
			o->session_expiry_s = (uint32_t)strtoul(optarg, 0, 10);
			break;
		case O_HELP:
		case 'h':
			usage(stdout);
			exit(0);
		default:
			return -1;
		}
	}
	if (optind != argc || o->nports == 0)
		return -1;
	/* Only loopback: the generator never talks to another host. */
	if (strcmp(o->host, "127.0.0.1") != 0) {
		fprintf(stderr, "kite-bench: only 127.0.0.1 is supported\n");
		return -1;
	}
	if (!o->tls && (o->cafile || o->cert || o->key || o->cert_dir ||
			o->tls_version || o->tls_resume)) {
		fprintf(stderr, "kite-bench: TLS options need --tls\n");
		return -1;
	}
	if (o->persistent && (o->topo == KB_TOPO_STORM ||
			      o->session_expiry_s == 0)) {
		/* A storm slot reconnects under its id: its session would be
		 * present from the second cycle on. */
		fprintf(stderr, "kite-bench: --persistent needs a session "
				"expiry > 0 and is not for storms\n");
		return -1;
	}
	if (o->cert && o->cert_dir) {
		fprintf(stderr, "kite-bench: --cert or --cert-dir, not both\n");
		return -1;
	}
	if (o->qos > 2 || o->payload < KB_PAYLOAD_MIN ||
	    o->payload > KB_PAYLOAD_MAX || o->window == 0 ||
	    o->window > KB_WINDOW_MAX || o->rate < 0 ||
	    o->connect_concurrency == 0 || o->max_outstanding == 0 ||
	    o->burst == 0 || o->burst > KB_PUB_BATCH_MAX)
		return -1;
	if (o->topo == KB_TOPO_IDLE) {
		o->pubs = o->subs = 0;
		if (o->idle == 0)
			return -1;
	} else if (o->topo == KB_TOPO_STORM) {
		/* The slots are subscribers that expect no publisher. */
		o->pubs = 0;
		o->subs = o->idle;
		o->idle = 0;
		if (o->subs == 0)
			return -1;
	} else {
		o->idle = 0;
		if (o->pubs == 0 || o->subs == 0)
			return -1;
		if (o->topo == KB_TOPO_P2P && o->pubs != o->subs)
			return -1;
	}
	if ((uint64_t)o->pubs + o->subs + o->idle > KB_CONNS_MAX)
		return -1;
	return 0;
}

/* ---- topology ---------------------------------------------------------- */

/* conns[] holds subscribers, then publishers, then idle clients. */
static int build(struct kb *kb)
{
	const struct kb_opts *o = &kb->o;
	kb->npubs = o->pubs;
	kb->nsubs = o->subs;
	kb->nconns = o->pubs + o->subs + o->idle;
	kb->conns = calloc(kb->nconns, sizeof(*kb->conns));
	kb->pubs = calloc(kb->npubs ? kb->npubs : 1, sizeof(*kb->pubs));
	kb->subs = calloc(kb->nsubs ? kb->nsubs : 1, sizeof(*kb->subs));
	kb->ready = calloc(kb->npubs ? kb->npubs : 1, sizeof(*kb->ready));
	if (!kb->conns || !kb->pubs || !kb->subs || !kb->ready)
		return -1;
	for (uint32_t i = 0; i < kb->nconns; i++) {
		struct kb_conn *c = &kb->conns[i];
		c->fd = -1;
		c->port = o->ports[i % o->nports];
		if (i < kb->nsubs) {
			c->role = KB_ROLE_SUB;
			c->role_idx = i;
		} else if (i < kb->nsubs + kb->npubs) {
			c->role = KB_ROLE_PUB;
			c->role_idx = i - kb->nsubs;
		} else {
			c->role = KB_ROLE_IDLE;
			c->role_idx = i - kb->nsubs - kb->npubs;
		}
	}
	kb->ntracks = 0;
	for (uint32_t i = 0; i < kb->nsubs; i++) {
		struct kb_sub *s = &kb->subs[i];
		s->conn = i;
		const char *f = "bench/fanout";
		char buf[KB_TOPIC_MAX];
		if (o->topo == KB_TOPO_FANIN) {
			f = "devices/+/telemetry";
		} else if (o->topo == KB_TOPO_P2P || o->topo == KB_TOPO_STORM) {
			snprintf(buf, sizeof(buf), "%s/%u",
				 o->topo == KB_TOPO_P2P ? "p2p" : "storm", i);
			f = buf;
		}
		s->filter_len = (uint16_t)snprintf(s->filter, sizeof(s->filter),
						   "%s", f);
		s->pub_lo = o->topo == KB_TOPO_P2P ? i : 0;
		s->pub_n = o->topo == KB_TOPO_P2P ? 1 : kb->npubs;
		if (o->topo == KB_TOPO_STORM)
			s->pub_lo = s->pub_n = 0;
		s->track_off = kb->ntracks;
		kb->ntracks += s->pub_n;
	}
	kb->tracks = calloc(kb->ntracks ? kb->ntracks : 1, sizeof(*kb->tracks));
	if (!kb->tracks)
		return -1;
	for (uint32_t i = 0; i < kb->npubs; i++) {
		struct kb_pub *p = &kb->pubs[i];
		p->conn = kb->nsubs + i;
		p->fanout = o->topo == KB_TOPO_P2P ? 1 : kb->nsubs;
		p->window_eff = o->window;
		if (o->topo == KB_TOPO_FANIN)
			p->topic_len = (uint16_t)snprintf(
				p->topic, sizeof(p->topic),
				"devices/%u/telemetry", i);
		else if (o->topo == KB_TOPO_P2P)
			p->topic_len = (uint16_t)snprintf(
				p->topic, sizeof(p->topic), "p2p/%u", i);
		else
			p->topic_len = (uint16_t)snprintf(
				p->topic, sizeof(p->topic), "bench/fanout");
		if (o->qos > 0) {
			p->slots = calloc(o->window, 1);
			if (!p->slots)
				return -1;
		}
	}
	/* Filler after the stamped header: something compressible-looking
	 * but not all zeros. */
	for (uint32_t i = 0; i < KB_PAYLOAD_MAX; i++)
		kb->payload[i] = (uint8_t)('a' + i % 26);
	return 0;
}

/* ---- phases ------------------------------------------------------------ */

static void set_phase(struct kb *kb, enum kb_phase ph, uint64_t now)
{
	kb->phase = ph;
	kb->phase_start_ns = now;
}

static void window_begin(struct kb *kb, uint64_t now)
{
	kb->win_start_ns = now;
	kb->self_cpu0 = kb_self_cpu_s();
	if (kb->o.broker_pid > 0) {
		kb->broker_cpu0 = kb_proc_cpu_s(kb->o.broker_pid);
		kb->rss_start_kb = kb_proc_rss_kb(kb->o.broker_pid);
	}
	kb->sent_win = kb->recv_win = 0;
	kb->io_sends0 = kb->io_sends;
	kb->io_recvs0 = kb->io_recvs;
	kb->io_polls0 = kb->io_polls;
	kb->cycles_win = 0;
	kb_hist_reset(&kb->lat);
	kb_proc_cpu_ticks(kb->gen_cpu, &kb->gen_busy0, &kb->gen_total0);
	kb_proc_cpu_ticks(kb->broker_cpu, &kb->brk_busy0, &kb->brk_total0);
}

static void window_end(struct kb *kb, uint64_t now)
{
	kb->win_end_ns = now;
	kb->self_cpu1 = kb_self_cpu_s();
	kb->io_sends1 = kb->io_sends;
	kb->io_recvs1 = kb->io_recvs;
	kb->io_polls1 = kb->io_polls;
	if (kb->o.broker_pid > 0) {
		kb->broker_cpu1 = kb_proc_cpu_s(kb->o.broker_pid);
		kb->rss_end_kb = kb_proc_rss_kb(kb->o.broker_pid);
		kb->hwm_end_kb = kb_proc_hwm_kb(kb->o.broker_pid);
	}
	kb_proc_cpu_ticks(kb->gen_cpu, &kb->gen_busy1, &kb->gen_total1);
	kb_proc_cpu_ticks(kb->broker_cpu, &kb->brk_busy1, &kb->brk_total1);
}

static uint64_t s_to_ns(double s)
{
	return (uint64_t)(s * 1e9);
}

static void setup_open(struct kb *kb, uint32_t lo, uint32_t hi, uint64_t now)
{
	kb->open_next = lo;
	kb->open_end = hi;
	kb->setup_start_ns = kb->setup_start_ns ? kb->setup_start_ns : now;
}

/* Opens queued connections while fewer than connect_concurrency are in
 * setup; a broker's accept queue is short (Mosquitto listens with 100). */
static void setup_pump(struct kb *kb)
{
	while (kb->open_next < kb->open_end &&
	       kb->setup_inflight < kb->o.connect_concurrency && !kb->fatal) {
		uint32_t idx = kb->open_next++;
		if (kb_conn_open(kb, idx) != 0) {
			kb_error(kb, "connect %u to 127.0.0.1:%u: %s", idx,
				 kb->conns[idx].port, strerror(errno));
			kb->c.conn_failures++;
			kb->fatal = true;
			return;
		}
		kb->setup_inflight++;
	}
}

static bool pubs_all_acked(const struct kb *kb)
{
	if (kb->o.qos == 0)
		return true;
	for (uint32_t i = 0; i < kb->npubs; i++)
		if (kb->pubs[i].unacked)
			return false;
	return true;
}

/* Saturation runs bound what is in flight by deliveries seen; a QoS 0
 * message the broker dropped is never seen, so after stall_s without any
 * progress the in-flight count is forgiven (counted in "stalls"). */
static void check_stall(struct kb *kb, uint64_t now)
{
	if (kb->g_out == 0 || now - kb->last_progress_ns < s_to_ns(kb->o.stall_s))
		return;
	for (uint32_t i = 0; i < kb->npubs; i++) {
		kb->pubs[i].out_deliv = 0;
		kb_pub_wake(kb, i);
	}
	kb->g_out = 0;
	kb->c.stalls++;
	kb->last_progress_ns = now;
}

/* Publishes what pacing and the windows allow; returns how many were
 * sent, and in *more whether more could go right away (saturation, batch
 * cap reached). */
static uint32_t publish(struct kb *kb, uint64_t now, bool *more)
{
	uint32_t budget = KB_PUB_BATCH_MAX;
	if (kb->o.rate > 0) {
		double add = (double)(now - kb->tokens_ns) * kb->o.rate / 1e9;
		kb->tokens_ns = now;
		/* At most 10 ms of catch-up after a stall: a fixed-rate run
		 * must not turn into a burst. */
		double cap = fmax(1.0, kb->o.rate * 0.01);
		kb->tokens = fmin(kb->tokens + add, cap);
		budget = kb->tokens < 1 ? 0 : (uint32_t)fmin(kb->tokens, 1e6);
	}
	uint32_t sent = 0;
	/* At saturation each publisher may put up to `burst` messages in one
	 * send; at a fixed rate it is one message per token, round-robin. */
	uint32_t burst = kb->o.rate > 0 ? 1 : kb->o.burst;
	while (sent < budget && kb->ready_n && !kb->fatal) {
		uint32_t i = kb->ready[kb->ready_head];
		struct kb_pub *p = &kb->pubs[i];
		uint32_t k = 0;
		enum kb_pub_block b;
		while ((b = kb_pub_can_send(kb, p)) == KB_PUB_OK &&
		       k < burst && sent < budget) {
			kb_pub_send(kb, i, now);
			k++;
			sent++;
		}
		if (b == KB_PUB_BLOCKED_ALL)
			break; /* stays first: it goes on when credit returns */
		kb->ready_head = (kb->ready_head + 1) % kb->npubs;
		kb->ready_n--;
		p->queued = false;
		if (b == KB_PUB_OK)
			kb_pub_wake(kb, i); /* more to send: back of the queue */
	}
	if (kb->o.rate > 0)
		kb->tokens -= sent;
	*more = kb->o.rate == 0 && sent == budget;
	return sent;
}

static void ping_scan(struct kb *kb, uint64_t now)
{
	if (kb->o.keepalive_s == 0 || now - kb->last_ping_scan_ns < 1000000000ull)
		return;
	kb->last_ping_scan_ns = now;
	uint64_t half = (uint64_t)kb->o.keepalive_s * 500000000ull;
	for (uint32_t i = 0; i < kb->nconns; i++) {
		struct kb_conn *c = &kb->conns[i];
		if (c->state == KB_ST_READY && now - c->last_tx_ns > half)
			kb_client_ping(kb, i, now);
	}
}

/* Moves between phases; returns the longest the loop may sleep (ns). */
static uint64_t advance(struct kb *kb, uint64_t now)
{
	const struct kb_opts *o = &kb->o;
	uint64_t in_phase = now - kb->phase_start_ns;
	if ((kb->phase == KB_PH_WARMUP || kb->phase == KB_PH_MEASURE) &&
	    (kb->c.conn_closed || kb->c.conn_failures || kb->fatal)) {
		/* The broker dropped clients: the result is already a failure,
		 * stop now instead of waiting the window out. */
		kb_error(kb, "stopping: %llu connections lost, %llu failed",
			 (unsigned long long)kb->c.conn_closed,
			 (unsigned long long)kb->c.conn_failures);
		if (kb->phase == KB_PH_MEASURE)
			window_end(kb, now);
		set_phase(kb, KB_PH_DONE, now);
		return 0;
	}
	switch (kb->phase) {
	case KB_PH_SETUP_SUBS:
	case KB_PH_SETUP_PUBS:
		if (kb->c.conn_failures || kb->c.conn_closed) {
			kb->fatal = true;
			return 0;
		}
		if (now - kb->setup_start_ns > s_to_ns(o->setup_s)) {
			kb_error(kb, "setup: %u of %u connections ready after %.0f s",
				 kb->setup_ready, kb->nconns, o->setup_s);
			kb->fatal = true;
			return 0;
		}
		setup_pump(kb);
		if (kb->open_next < kb->open_end ||
		    kb->setup_ready < kb->open_end)
			return 10000000;
		if (kb->phase == KB_PH_SETUP_SUBS && kb->npubs) {
			set_phase(kb, KB_PH_SETUP_PUBS, now);
			setup_open(kb, kb->nsubs, kb->nsubs + kb->npubs, now);
			setup_pump(kb);
			return 10000000;
		}
		kb->setup_end_ns = now;
		kb->last_progress_ns = now;
		kb->tokens_ns = now;
		if (o->topo == KB_TOPO_IDLE) {
			set_phase(kb, KB_PH_HOLD, now);
			window_begin(kb, now);
		} else {
			set_phase(kb, KB_PH_WARMUP, now);
		}
		return 0;
	case KB_PH_WARMUP:
		if (in_phase >= s_to_ns(o->warmup_s)) {
			set_phase(kb, KB_PH_MEASURE, now);
			window_begin(kb, now);
		}
		return 0;
	case KB_PH_MEASURE:
		if (in_phase >= s_to_ns(o->duration_s)) {
			window_end(kb, now);
			if (o->topo == KB_TOPO_STORM) {
				set_phase(kb, KB_PH_DONE, now);
				return 0;
			}
			set_phase(kb, KB_PH_DRAIN, now);
			kb->last_progress_ns = now;
		}
		return 0;
	case KB_PH_DRAIN: {
		bool complete = kb->c.unique >= kb->expected &&
				pubs_all_acked(kb);
		bool idle = now - kb->last_progress_ns > 2000000000ull;
		if (complete || idle || in_phase >= s_to_ns(o->drain_s)) {
			if (!complete)
				kb_error(kb, "drain ended with %llu of %llu deliveries",
					 (unsigned long long)kb->c.unique,
					 (unsigned long long)kb->expected);
			set_phase(kb, KB_PH_DONE, now);
		}
		return 10000000;
	}
	case KB_PH_HOLD:
		if (kb->c.conn_closed) {
			kb->fatal = true;
			return 0;
		}
		if (in_phase >= s_to_ns(o->hold_s)) {
			window_end(kb, now);
			set_phase(kb, KB_PH_DONE, now);
		}
		return 10000000;
	case KB_PH_DONE:
		return 0;
	}
	return 0;
}

static bool publishing(const struct kb *kb)
{
	return kb->phase == KB_PH_WARMUP || kb->phase == KB_PH_MEASURE;
}

/* How long the next poll may sleep, once a turn's work is done. */
static uint64_t next_sleep(struct kb *kb, uint64_t phase_sleep, bool more)
{
	bool running = publishing(kb) || kb->phase == KB_PH_DRAIN;
	if (kb->o.busy_poll && running)
		return 0;
	if (!publishing(kb))
		return phase_sleep;
	if (more)
		return 0;
	if (kb->o.rate > 0) {
		/* Until the bucket holds the next token. */
		double need = 1.0 - kb->tokens;
		uint64_t t = need <= 0 ? 0 : (uint64_t)(need * 1e9 / kb->o.rate);
		return t < 1000000 ? t : 1000000;
	}
	return 1000000;
}

/* --poll-us at saturation: let bytes pile up per socket, so one recv
 * carries several packets (fewer syscalls and ACKs). */
static void poll_gap(struct kb *kb, uint64_t last_ns)
{
	if (!kb->o.poll_us || kb->o.rate > 0 || !publishing(kb))
		return;
	uint64_t gap = kb_now_ns() - last_ns;
	uint64_t want = (uint64_t)kb->o.poll_us * 1000u;
	if (gap < want) {
		struct timespec d = {0, (long)(want - gap)};
		nanosleep(&d, NULL);
	}
}

/* One loop turn: poll, handle events, move phases, publish, flush. With
 * --busy-poll the poll never sleeps during the run, and turns that found
 * nothing to do are timed so the report can tell spinning from work. */
static uint64_t turn(struct kb *kb, struct epoll_event *ev, uint64_t sleep_ns)
{
	struct timespec ts = {.tv_sec = (time_t)(sleep_ns / 1000000000ull),
			      .tv_nsec = (long)(sleep_ns % 1000000000ull)};
	/* Spinning is counted in CPU time, not wall time: on a shared
	 * machine a spinning turn may be preempted, and wall time would then
	 * count other processes' time as ours. The thread's CPU clock is read
	 * only while idle turns follow each other (a stretch), so working
	 * turns pay nothing for it. */
	uint64_t cpu0 = kb->spin_from ? kb_thread_cpu_ns() : 0;
	int n = epoll_pwait2(kb->epfd, ev, KB_EVENTS_MAX, &ts, NULL);
	if (n > 0)
		kb->io_polls++;
	if (n < 0 && errno != EINTR) {
		kb_error(kb, "epoll_pwait2: %s", strerror(errno));
		kb->fatal = true;
		return 0;
	}
	uint64_t now = kb_now_ns();
	for (int i = 0; i < n; i++)
		kb_handle_event(kb, ev[i].data.u32, ev[i].events, now);
	uint64_t phase_sleep = advance(kb, now);
	bool more = false;
	uint32_t sent = 0;
	if (publishing(kb)) {
		sent = publish(kb, now, &more);
		if (kb->o.rate == 0)
			check_stall(kb, now);
	}
	ping_scan(kb, now);
	bool idle = n <= 0 && sent == 0 && kb->nflush == 0;
	kb_flush_all(kb);
	bool counting = kb->o.busy_poll && kb->phase == KB_PH_MEASURE;
	if (idle && counting && !kb->spin_from) {
		kb->spin_from = kb_thread_cpu_ns();
	} else if (kb->spin_from && (!idle || !counting)) {
		/* The stretch ended when this turn began. */
		kb->spin_ns += cpu0 - kb->spin_from;
		kb->spin_from = 0;
	}
	poll_gap(kb, now);
	return next_sleep(kb, phase_sleep, more);
}

static void storm_open(struct kb *kb, uint32_t idx)
{
	struct kb_conn *c = &kb->conns[idx];
	c->connect_tries = 0;
	c->state = KB_ST_QUEUED;
	if (kb_conn_open(kb, idx) != 0) {
		kb_error(kb, "storm: connect %u to 127.0.0.1:%u: %s", idx, c->port,
			 strerror(errno));
		kb->c.conn_failures++;
		kb->fatal = true;
		return;
	}
	kb->setup_inflight++;
}

void kb_storm_cycle_done(struct kb *kb, uint32_t idx, uint64_t now)
{
	kb_conn_close(kb, idx, true);
	kb->cycles++;
	if (kb->phase == KB_PH_MEASURE)
		kb->cycles_win++;
	kb->last_progress_ns = now;
	if (kb->phase == KB_PH_WARMUP || kb->phase == KB_PH_MEASURE)
		storm_open(kb, idx);
}

static void run(struct kb *kb)
{
	struct epoll_event ev[KB_EVENTS_MAX];
	uint64_t now = kb_now_ns();
	set_phase(kb, KB_PH_SETUP_SUBS, now);
	if (kb->o.topo == KB_TOPO_STORM) {
		/* No setup: every slot starts its first cycle now. */
		kb->setup_start_ns = kb->setup_end_ns = now;
		kb->last_progress_ns = now;
		set_phase(kb, KB_PH_WARMUP, now);
		for (uint32_t i = 0; i < kb->nconns && !kb->fatal; i++)
			storm_open(kb, i);
	} else if (kb->o.topo == KB_TOPO_IDLE)
		setup_open(kb, 0, kb->nconns, now);
	else
		setup_open(kb, 0, kb->nsubs, now);
	uint64_t sleep_ns = 0;
	while (kb->phase != KB_PH_DONE && !kb->fatal && !timed_out)
		sleep_ns = turn(kb, ev, sleep_ns);
	if (timed_out)
		kb_error(kb, "timed out after %.0f s (phase %d)", kb->o.timeout_s,
			 (int)kb->phase);
	if (kb->phase == KB_PH_MEASURE || kb->phase == KB_PH_HOLD)
		window_end(kb, kb_now_ns());
}

/* Says goodbye to every connection and lets the DISCONNECTs leave. */
static void shutdown_all(struct kb *kb)
{
	enum kb_phase ph = kb->phase;
	kb->phase = KB_PH_DONE; /* closes from here on are ours */
	for (uint32_t i = 0; i < kb->nconns; i++)
		kb_client_disconnect(kb, i);
	kb_flush_all(kb);
	for (uint32_t i = 0; i < kb->nconns; i++)
		kb_conn_close(kb, i, true);
	kb->phase = ph;
}

/* ---- report ------------------------------------------------------------ */

struct kb_result {
	uint64_t lost, unacked;
	double window_s, broker_cpu_s, self_cpu_s, gen_cpu_pct;
	double pub_rate, deliv_rate, cpu_per_m, rss_per_conn_kb;
	double broker_cpu_pct;
	double hs_rate, cpu_ms_per_hs; /* storm */
	double spin_s, gen_work_pct; /* busy-poll: spinning, and the rest */
	/* The generator's own cost: working CPU (spinning left out) per
	 * million deliveries, and per million messages it moved (publishes
	 * sent + deliveries received). Less sensitive to other processes on
	 * its CPU than its rates are. */
	double gen_cpu_per_m, gen_cpu_per_m_msgs;
	/* /proc/stat over the window: how busy each CPU was, and how much of
	 * that was neither us nor the broker (other processes, interrupts). */
	double gen_busy_pct, gen_foreign_pct, brk_busy_pct, brk_foreign_pct;
	double both_foreign_pct; /* broker_spread: over both CPUs, else -1 */
	bool ok, generator_bound, rate_met, contended;
	const char *bottleneck;
};

static void verify(struct kb *kb, struct kb_result *r)
{
	for (uint32_t i = 0; i < kb->nsubs; i++) {
		const struct kb_sub *s = &kb->subs[i];
		for (uint32_t j = 0; j < s->pub_n; j++) {
			const struct kb_track *t = &kb->tracks[s->track_off + j];
			uint64_t sent = kb->pubs[s->pub_lo + j].seq;
			uint64_t got = (uint64_t)t->next - t->gaps;
			if (got < sent)
				r->lost += sent - got;
			else if (got > sent)
				kb->c.unexpected += got - sent;
		}
	}
	for (uint32_t i = 0; i < kb->npubs; i++)
		r->unacked += kb->pubs[i].unacked;
}

static void compute(struct kb *kb, struct kb_result *r)
{
	memset(r, 0, sizeof(*r));
	verify(kb, r);
	const struct kb_opts *o = &kb->o;
	r->window_s = kb->win_end_ns > kb->win_start_ns
			      ? (double)(kb->win_end_ns - kb->win_start_ns) / 1e9
			      : 0;
	r->self_cpu_s = kb->self_cpu1 - kb->self_cpu0;
	r->broker_cpu_s = o->broker_pid > 0 && kb->broker_cpu0 >= 0 &&
					  kb->broker_cpu1 >= 0
				  ? kb->broker_cpu1 - kb->broker_cpu0
				  : -1;
	if (r->window_s > 0) {
		r->gen_cpu_pct = 100.0 * r->self_cpu_s / r->window_s;
		r->pub_rate = (double)kb->sent_win / r->window_s;
		r->deliv_rate = (double)kb->recv_win / r->window_s;
	}
	r->broker_cpu_pct = r->window_s > 0 && r->broker_cpu_s >= 0
				    ? 100.0 * r->broker_cpu_s / r->window_s
				    : -1;
	r->gen_busy_pct = r->gen_foreign_pct = -1;
	r->brk_busy_pct = r->brk_foreign_pct = -1;
	if (kb->gen_cpu >= 0 && kb->gen_total1 > kb->gen_total0) {
		r->gen_busy_pct = 100.0 * (double)(kb->gen_busy1 - kb->gen_busy0) /
				  (double)(kb->gen_total1 - kb->gen_total0);
		r->gen_foreign_pct = fmax(0, r->gen_busy_pct - r->gen_cpu_pct);
	}
	if (kb->broker_cpu >= 0 && kb->broker_cpu != kb->gen_cpu &&
	    kb->brk_total1 > kb->brk_total0 && r->broker_cpu_pct >= 0) {
		r->brk_busy_pct = 100.0 * (double)(kb->brk_busy1 - kb->brk_busy0) /
				  (double)(kb->brk_total1 - kb->brk_total0);
		r->brk_foreign_pct = fmax(0, r->brk_busy_pct - r->broker_cpu_pct);
	}
	r->both_foreign_pct = -1;
	if (kb->broker_spread && r->gen_busy_pct >= 0 && r->brk_busy_pct >= 0) {
		/* The broker's time is spread over both CPUs: only the sum
		 * says how much of them other processes took. */
		r->both_foreign_pct = fmax(0, r->gen_busy_pct + r->brk_busy_pct -
						      r->gen_cpu_pct -
						      r->broker_cpu_pct);
		r->gen_foreign_pct = r->brk_foreign_pct = -1;
	}
	r->contended = r->gen_foreign_pct > 10 || r->brk_foreign_pct > 10 ||
		       r->both_foreign_pct > 10;
	r->spin_s = (double)kb->spin_ns / 1e9;
	r->gen_work_pct = r->window_s > 0
				  ? 100.0 * fmax(0, r->self_cpu_s - r->spin_s) /
					    r->window_s
				  : 0;
	r->generator_bound = r->gen_work_pct > o->gen_bound_pct;
	double work_s = fmax(0, r->self_cpu_s - r->spin_s);
	r->gen_cpu_per_m = kb->recv_win ? work_s / ((double)kb->recv_win / 1e6)
					: -1;
	r->gen_cpu_per_m_msgs =
		kb->recv_win + kb->sent_win
			? work_s / ((double)(kb->recv_win + kb->sent_win) / 1e6)
			: -1;
	/* Which side limited the run: a saturation run should say "broker".
	 * A broker spread over both CPUs shares the generator's: when both
	 * are busy, neither side alone is the limit. */
	if (kb->broker_spread && r->generator_bound)
		r->bottleneck = "generator";
	else if (kb->broker_spread && r->gen_busy_pct >= 90 &&
		 r->brk_busy_pct >= 90)
		r->bottleneck = "both CPUs busy";
	else if (!kb->broker_spread && r->broker_cpu_pct >= 90)
		r->bottleneck = "broker";
	else if (r->generator_bound)
		r->bottleneck = "generator";
	else if (r->contended)
		r->bottleneck = "other processes (contended)";
	else if (o->rate > 0 || o->topo == KB_TOPO_IDLE)
		r->bottleneck = "none (fixed load)";
	else
		r->bottleneck = "neither (latency-bound)";
	r->cpu_per_m = kb->recv_win && r->broker_cpu_s >= 0
			       ? r->broker_cpu_s / ((double)kb->recv_win / 1e6)
			       : -1;
	if (o->topo == KB_TOPO_IDLE && kb->rss_end_kb > 0 &&
	    kb->rss_before_kb > 0)
		r->rss_per_conn_kb = (double)(kb->rss_end_kb - kb->rss_before_kb) /
				     (double)kb->nconns;
	if (o->topo == KB_TOPO_STORM && r->window_s > 0) {
		r->hs_rate = (double)kb->cycles_win / r->window_s;
		r->cpu_ms_per_hs = kb->cycles_win && r->broker_cpu_s >= 0
					   ? 1000.0 * r->broker_cpu_s /
						     (double)kb->cycles_win
					   : -1;
	}
	r->rate_met = o->rate == 0 || r->pub_rate >= 0.97 * o->rate;
	bool must_deliver = o->qos > 0 || o->rate > 0;
	r->ok = !kb->fatal && !timed_out && kb->c.conn_failures == 0 &&
		kb->c.conn_closed == 0 && kb->c.protocol_errors == 0 &&
		kb->c.bad_acks == 0 && kb->c.unexpected == 0 &&
		kb->c.session_present == 0 &&
		kb->c.dups == 0 && kb->c.reordered == 0 &&
		!(must_deliver && r->lost) && r->unacked == 0 &&
		(o->topo == KB_TOPO_IDLE    ? kb->setup_ready == kb->nconns
		 : o->topo == KB_TOPO_STORM ? kb->cycles_win > 0
					    : kb->recv_win > 0);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static const char *topo_name(enum kb_topology t)
{
	static const char *const names[] = {"fanout", "fanin", "p2p", "idle",
					    "storm"};
	return names[t];
}

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

static void report(struct kb *kb, const struct kb_result *r)
{
	const struct kb_opts *o = &kb->o;
	const struct kb_counters *k = &kb->c;
	FILE *f = stdout;
	fprintf(f, "{\"tool\":\"kite-bench\",\"scenario\":");
	json_str(f, o->name);
	fprintf(f, ",\"topology\":\"%s\",\"transport\":\"%s\",\"tls\":",
		topo_name(o->topo),
		o->ws ? (o->tls ? "wss" : "ws") : o->tls ? "tls" : "tcp");
	json_str(f, o->tls ? kb_tls_version() : "");
	fprintf(f, ",\"tls_client_certs\":%u,\"tls_handshakes\":%llu,"
		   "\"tls_resumed\":%llu,\"storm_cycles\":%llu,\"storm_cycles_in_window\":%llu,"
		   "\"handshakes_per_s\":%.1f,\"broker_cpu_ms_per_handshake\":%.4f,",
		o->tls ? (o->cert ? 1 : kb_tls_identities()) : 0,
		(unsigned long long)(o->tls ? kb_tls_handshakes() : 0),
		(unsigned long long)(o->tls ? kb_tls_resumed() : 0),
		(unsigned long long)kb->cycles,
		(unsigned long long)kb->cycles_win, r->hs_rate,
		o->topo == KB_TOPO_STORM ? r->cpu_ms_per_hs : -1);
	fprintf(f, "\"mqtt\":\"%s\","
		   "\"qos\":%u,\"pubs\":%u,\"subs\":%u,\"conns\":%u,"
		   "\"payload\":%u,\"rate_target\":%.1f,\"saturation\":%s,"
		   "\"window\":%u,\"burst\":%u,\"poll_us\":%u,\"max_outstanding\":%llu,",
		o->version == MQTT_V5 ? "5" : "3.1.1",
		o->qos, kb->npubs, kb->nsubs, kb->nconns, o->payload, o->rate,
		o->rate == 0 && o->topo != KB_TOPO_IDLE ? "true" : "false",
		o->window, o->burst, o->poll_us, (unsigned long long)o->max_outstanding);
	fprintf(f, "\"setup_s\":%.3f,\"window_s\":%.3f,",
		kb->setup_end_ns ? (double)(kb->setup_end_ns - kb->setup_start_ns) / 1e9
				 : -1,
		r->window_s);
	fprintf(f, "\"sent\":%llu,\"expected\":%llu,\"received\":%llu,"
		   "\"unique\":%llu,\"lost\":%llu,\"dups\":%llu,"
		   "\"dups_flagged\":%llu,\"reordered\":%llu,\"unexpected\":%llu,"
		   "\"unacked\":%llu,\"bad_acks\":%llu,\"protocol_errors\":%llu,"
		   "\"conn_failures\":%llu,\"conn_closed\":%llu,\"stalls\":%llu,"
		   "\"persistent\":%s,\"session_expiry_s\":%u,"
		   "\"session_present\":%llu,",
		(unsigned long long)k->sent, (unsigned long long)kb->expected,
		(unsigned long long)k->recv, (unsigned long long)k->unique,
		(unsigned long long)r->lost, (unsigned long long)k->dups,
		(unsigned long long)k->dups_flagged,
		(unsigned long long)k->reordered,
		(unsigned long long)k->unexpected,
		(unsigned long long)r->unacked, (unsigned long long)k->bad_acks,
		(unsigned long long)k->protocol_errors,
		(unsigned long long)k->conn_failures,
		(unsigned long long)k->conn_closed,
		(unsigned long long)k->stalls,
		o->persistent ? "true" : "false",
		o->persistent && o->version == MQTT_V5 ? o->session_expiry_s : 0,
		(unsigned long long)k->session_present);
	fprintf(f, "\"sent_in_window\":%llu,\"deliveries_in_window\":%llu,"
		   "\"pub_rate\":%.1f,\"deliveries_per_s\":%.1f,\"rate_met\":%s,",
		(unsigned long long)kb->sent_win,
		(unsigned long long)kb->recv_win, r->pub_rate, r->deliv_rate,
		r->rate_met ? "true" : "false");
	const struct kb_hist *h = &kb->lat;
	fprintf(f, "\"latency_us\":{\"n\":%llu,\"mean\":%.1f,\"p50\":%.1f,"
		   "\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f},",
		(unsigned long long)h->n,
		h->n ? h->sum / (double)h->n / 1000.0 : 0,
		us(kb_hist_quantile(h, 0.5)), us(kb_hist_quantile(h, 0.9)),
		us(kb_hist_quantile(h, 0.99)), us(kb_hist_quantile(h, 0.999)),
		us(h->max));
	fprintf(f, "\"broker_pid\":%d,\"broker_cpu_s\":%.3f,"
		   "\"broker_cpu_pct\":%.1f,\"broker_cpu_s_per_m\":%.4f,"
		   "\"broker_rss_kb_before\":%ld,\"broker_rss_kb_start\":%ld,"
		   "\"broker_rss_kb_end\":%ld,\"broker_hwm_kb\":%ld,"
		   "\"rss_per_conn_kb\":%.3f,",
		(int)o->broker_pid, r->broker_cpu_s, r->broker_cpu_pct,
		r->cpu_per_m, kb->rss_before_kb, kb->rss_start_kb,
		kb->rss_end_kb, kb->hwm_end_kb, r->rss_per_conn_kb);
	fprintf(f, "\"gen_cpu\":%d,\"broker_cpu\":%d,\"gen_cpu_busy_pct\":%.1f,"
		   "\"gen_cpu_foreign_pct\":%.1f,\"broker_cpu_busy_pct\":%.1f,"
		   "\"broker_cpu_foreign_pct\":%.1f,\"contended\":%s,",
		kb->gen_cpu, kb->broker_cpu, r->gen_busy_pct, r->gen_foreign_pct,
		r->brk_busy_pct, r->brk_foreign_pct,
		r->contended ? "true" : "false");
	if (kb->broker_spread)
		fprintf(f, "\"broker_spread\":true,\"both_cpus_foreign_pct\":%.1f,",
			r->both_foreign_pct);
	fprintf(f, "\"uring\":%s,", kb->uring ? "true" : "false");
	fprintf(f, "\"busy_poll\":%s,\"gen_spin_s\":%.3f,\"gen_work_pct\":%.1f,",
		o->busy_poll ? "true" : "false", r->spin_s, r->gen_work_pct);
	fprintf(f, "\"gen_cpu_s_per_m\":%.4f,\"gen_cpu_s_per_m_msgs\":%.4f,"
		   "\"gen_sends_in_window\":%llu,\"gen_recvs_in_window\":%llu,"
		   "\"gen_polls_in_window\":%llu,",
		r->gen_cpu_per_m, r->gen_cpu_per_m_msgs,
		(unsigned long long)(kb->io_sends1 - kb->io_sends0),
		(unsigned long long)(kb->io_recvs1 - kb->io_recvs0),
		(unsigned long long)(kb->io_polls1 - kb->io_polls0));
	fprintf(f, "\"gen_cpu_s\":%.3f,\"gen_cpu_pct\":%.1f,"
		   "\"generator_bound\":%s,\"bottleneck\":\"%s\",\"ok\":%s,"
		   "\"errors\":[",
		r->self_cpu_s, r->gen_cpu_pct,
		r->generator_bound ? "true" : "false", r->bottleneck,
		r->ok ? "true" : "false");
	for (unsigned i = 0; i < kb->nerrors; i++) {
		if (i)
			fputc(',', f);
		json_str(f, kb->errors[i]);
	}
	fprintf(f, "]}\n");

	fprintf(f, "%s %s: %s  sent %llu  recv %llu/%llu  lost %llu  dup %llu  "
		   "reord %llu | %.0f deliveries/s, %.0f pub/s | lat us p50 %.0f "
		   "p99 %.0f p99.9 %.0f max %.0f | broker %.2f CPU-s = %.3f "
		   "CPU-s/M deliveries",
		o->name, topo_name(o->topo), r->ok ? "OK" : "FAILED",
		(unsigned long long)k->sent, (unsigned long long)k->unique,
		(unsigned long long)kb->expected, (unsigned long long)r->lost,
		(unsigned long long)k->dups, (unsigned long long)k->reordered,
		r->deliv_rate, r->pub_rate, us(kb_hist_quantile(h, 0.5)),
		us(kb_hist_quantile(h, 0.99)), us(kb_hist_quantile(h, 0.999)),
		us(h->max), r->broker_cpu_s, r->cpu_per_m);
	if (o->topo == KB_TOPO_STORM)
		fprintf(f, " | %u slots%s: %llu cycles in window = %.0f "
			   "handshakes/s, broker %.3f CPU-ms per handshake",
			kb->nconns, o->tls ? " (TLS)" : "",
			(unsigned long long)kb->cycles_win, r->hs_rate,
			r->cpu_ms_per_hs);
	if (o->topo == KB_TOPO_IDLE)
		fprintf(f, " | %u conns, broker RSS %ld -> %ld KiB = %.2f KiB/conn",
			kb->nconns, kb->rss_before_kb, kb->rss_end_kb,
			r->rss_per_conn_kb);
	if (o->persistent)
		fprintf(f, " | persistent sessions");
	if (k->session_present)
		fprintf(f, " | %llu CONNACKs with session present",
			(unsigned long long)k->session_present);
	fprintf(f, " | gen CPU %.0f%%", r->gen_cpu_pct);
	if (o->busy_poll)
		fprintf(f, " (busy-poll, working %.0f%%)", r->gen_work_pct);
	if (r->gen_cpu_per_m >= 0)
		fprintf(f, ", %.3f CPU-s/M deliveries, %.2f sends + %.2f "
			   "recvs per delivery",
			r->gen_cpu_per_m,
			(double)(kb->io_sends1 - kb->io_sends0) /
				(double)kb->recv_win,
			(double)(kb->io_recvs1 - kb->io_recvs0) /
				(double)kb->recv_win);
	fprintf(f, "%s%s", r->generator_bound ? " GENERATOR-BOUND" : "",
		r->rate_met ? "" : " RATE-NOT-MET");
	if (r->contended && kb->broker_spread)
		fprintf(f, " CONTENDED (other load: %.0f%% over CPUs %d+%d)",
			r->both_foreign_pct, kb->gen_cpu, kb->broker_cpu);
	else if (r->contended)
		fprintf(f, " CONTENDED (other load: %.0f%% on CPU %d, %.0f%% on CPU %d)",
			r->gen_foreign_pct, kb->gen_cpu, r->brk_foreign_pct,
			kb->broker_cpu);
	fputc('\n', f);
	fflush(f);
}

int main(int argc, char **argv)
{
	static struct kb kb; /* large: the payload and histogram */
	if (parse_opts(&kb.o, argc, argv) != 0) {
		usage(stderr);
		return 2;
	}
	kb.run_id = getpid();
	/* Fixed-rate pacing sleeps in tens of microseconds: the default
	 * 50 us timer slack would smear the schedule. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = on_alarm};
	sigaction(SIGALRM, &sa, NULL);
	alarm((unsigned)ceil(kb.o.timeout_s));

	uint64_t need = (uint64_t)kb.o.pubs + kb.o.subs + kb.o.idle + 64;
	uint64_t lim = kb_raise_nofile(need);
	if (lim < need) {
		fprintf(stderr, "kite-bench: need %llu descriptors, limit is %llu\n",
			(unsigned long long)need, (unsigned long long)lim);
		return 2;
	}
	if (kb.o.tls) {
		char err[200];
		if (kb_tls_init(&kb.o, err, sizeof(err)) != 0) {
			fprintf(stderr, "kite-bench: TLS: %s\n", err);
			return 2;
		}
		kb.tp = &kb_transport_tls;
	}
	if (build(&kb) != 0 || kb_net_init(&kb) != 0) {
		fprintf(stderr, "kite-bench: out of memory\n");
		return 2;
	}
	kb.gen_cpu = kb_proc_pinned_cpu(0);
	kb.broker_cpu = -1;
	if (kb.o.broker_pid > 0) {
		kb.rss_before_kb = kb_proc_rss_kb(kb.o.broker_pid);
		kb.broker_cpu = kb_proc_pinned_cpu(kb.o.broker_pid);
		cpu_set_t set;
		CPU_ZERO(&set);
		if (kb.broker_cpu < 0 && kb.gen_cpu >= 0 &&
		    sched_getaffinity(kb.o.broker_pid, sizeof(set), &set) == 0) {
			/* Not pinned to one CPU (kite-all): watch the first
			 * other CPU it may use with ours (2-CPU machine). */
			for (int i = 0; i < CPU_SETSIZE && kb.broker_cpu < 0; i++)
				if (i != kb.gen_cpu && CPU_ISSET(i, &set))
					kb.broker_cpu = i;
			kb.broker_spread = kb.broker_cpu >= 0;
		}
	}
	run(&kb);
	struct kb_result r;
	compute(&kb, &r);
	shutdown_all(&kb);
	report(&kb, &r);
	if (kb.setup_end_ns == 0 && kb.c.conn_failures)
		return 2;
	return r.ok ? 0 : 1;
}
