/* flood_filter.h: kite's XDP flood filter, the module's one interface.
 *
 * An XDP program on the listener interfaces drops, for TCP to the listener
 * ports only: every packet from a blocked source, and SYNs over a per-source
 * token bucket from sources that have not authenticated recently. The broker
 * reports events (strike, allow); at `strikes` strikes a source is blocked for
 * block_seconds, doubling on each repeat. Plain values only: no engine types.
 *
 * Built from bpf/flood_filter.c (real) or bpf/flood_filter_stub.c (where the
 * skeleton cannot be built: load fails with "not available"). See bpf/README.md.
 */
#ifndef KITE_BPF_FLOOD_FILTER_H
#define KITE_BPF_FLOOD_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct sockaddr;

#define FLOOD_FILTER_IFACES_MAX 8
#define FLOOD_FILTER_PORTS_MAX 16        /* == FF_PORTS_MAX in filter.h */
#define FLOOD_FILTER_ALLOW_SECONDS 3600  /* default allow_seconds */
#define FLOOD_FILTER_PIN_ROOT "/sys/fs/bpf/kite"

struct flood_filter_opts {
	const char **ifaces;       /* 1..FLOOD_FILTER_IFACES_MAX interface names */
	unsigned n_ifaces;
	const uint16_t *ports;     /* 1..FLOOD_FILTER_PORTS_MAX, host byte order */
	unsigned n_ports;
	uint32_t syn_rate, syn_burst; /* per source per second; rate 0 = no SYN limit */
	uint32_t strikes;          /* strikes (within 60 s) that block a source, >= 1 */
	uint32_t block_seconds;    /* first block; doubles on repeat (max 1 day) */
	/* Optional (0/NULL = default), after the fields above so designated
	 * initializers written for them keep working: */
	uint32_t allow_seconds;    /* allow entry lifetime, default 3600 */
	const char *pin_root;      /* default FLOOD_FILTER_PIN_ROOT; "" = don't pin */
};

struct flood_filter;           /* NULL if not loaded */

/* Loads and attaches (native XDP, generic if the driver lacks it) and pins the
 * maps under <pin_root>/<pid>/. NULL on failure, with err saying why: no
 * privileges, no BTF, interface missing, attach failed, bad options, not
 * available (stub build). Detached automatically if the process dies.
 * Pinning is only for `kite filter`: when it fails (a broker running as a
 * user that may not write under /sys/fs/bpf) the filter still loads, and
 * err says why the maps are not pinned; err is untouched otherwise. */
struct flood_filter *flood_filter_load(const struct flood_filter_opts *opts,
				       char *err, size_t errlen);
/* Detaches, unpins, frees. NULL is a no-op. */
void flood_filter_unload(struct flood_filter *ff);

/* Events from the broker: any thread; a few map syscalls each. NULL ff and
 * address families other than AF_INET/AF_INET6 are ignored. */
/* Failed handshake, bad cert/credentials, garbage before CONNECT, CONNECT
 * timeout. At `strikes` the source is blocked (and its allow entry removed). */
void flood_filter_strike(struct flood_filter *ff, const struct sockaddr *peer);
/* Successful CONNECT: the source's SYNs skip the token bucket for allow_seconds. */
void flood_filter_allow(struct flood_filter *ff, const struct sockaddr *peer);
/* Whether peer is blocked now: for a client behind a proxy (PROXY
 * protocol), whose packets XDP sees under the proxy's address. One map
 * lookup; false for a NULL ff or another family. */
bool flood_filter_blocked(struct flood_filter *ff, const struct sockaddr *peer);

struct flood_filter_stats {
	uint64_t passed, dropped_rate, dropped_block; /* XDP, summed over CPUs */
	uint64_t blocks_added, sources_allowed;       /* this process: blocks made,
	                                                 new allow entries */
};
void flood_filter_stats(struct flood_filter *ff, struct flood_filter_stats *out);

/* Writes "ADDRESS REMAINING_SECONDS\n" per blocked source; returns how many,
 * or -errno. */
int flood_filter_list(struct flood_filter *ff, FILE *out);
/* Unblocks addr and forgets its strikes: 0, -ENOENT if it was not blocked,
 * -EAFNOSUPPORT, or -errno. */
int flood_filter_clear(struct flood_filter *ff, const struct sockaddr *addr);

/* `kite filter list|clear ADDRESS|stats [--pid PID] [--pin-root DIR]` on a
 * running broker, through its pinned maps. argv[0] is "filter" (call with
 * argc - 1, argv + 1 from main). Returns the process exit status. */
int flood_filter_cli_main(int argc, char **argv);

#endif
