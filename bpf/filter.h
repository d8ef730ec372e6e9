/* filter.h: what the XDP program (filter.bpf.c) and user space (flood_filter.c,
 * tests, bench) both see. No includes: the BPF side gets __u8/__u32/__u64 from
 * vmlinux.h, user space from <linux/types.h>. */
#ifndef KITE_BPF_FILTER_H
#define KITE_BPF_FILTER_H

/* Limits, sized here so the verifier and the loader agree. */
#define FF_PORTS_MAX   16          /* listener ports matched by the program */
#define FF_BLOCK_MAX   65536       /* blocked sources (HASH: never evicted) */
#define FF_ALLOW_MAX   65536       /* allowed sources (LRU: oldest go first) */
#define FF_BUCKET_MAX  262144      /* SYN token buckets (LRU: a spoofed flood
                                      evicts buckets, never blocks) */
#define FF_STRIKES_MAX 65536       /* strike records (LRU, user space only) */
#define FF_EXT_MAX     8           /* IPv6 extension headers walked to find TCP;
                                      beyond, TCP is hidden (see filter.bpf.c) */

/* The SYN limit of R per second, burst B, as the program runs it: one SYN
 * per FF_SYN_INTERVAL_NS(R) on average, B at once. Rounded up, so a source
 * never gets more than R per second (less by a fraction under R / 1e9:
 * 0.1% at kite's maximum rate of 1e6). */
#define FF_NS_PER_S 1000000000ULL
#define FF_SYN_INTERVAL_NS(rate) ((FF_NS_PER_S + (rate) - 1) / (rate))

/* TCP whose header is not in the packet (a later fragment, ESP) or cannot be
 * read (cut short, behind more than FF_EXT_MAX extension headers) shows no
 * port: a drop of it is counted as if to a listener port, a pass is not
 * counted. */
enum ff_counter {
	FF_CNT_PASSED,        /* TCP to a listener port, let through */
	FF_CNT_DROPPED_RATE,  /* SYN (or unreadable TCP) over its source's bucket */
	FF_CNT_DROPPED_BLOCK, /* any TCP to a listener port from a blocked source */
	FF_CNT_MAX,
};

/* Source address, network byte order: IPv6, or IPv4-mapped ::ffff:a.b.c.d
 * (the same key a dual-stack listener sees for an IPv4 peer). */
struct ff_key {
	__u32 addr[4];
};

/* Value of ff_block and ff_allow: CLOCK_MONOTONIC ns. The program reads it
 * with bpf_ktime_get_coarse_ns() (same clock, tick resolution, half the cost
 * per packet of bpf_ktime_get_ns()): an entry lives up to one tick longer. */
struct ff_expiry {
	__u64 expires_ns;
};

/* Value of ff_buckets (program only): the source's token bucket as one
 * word, so every CPU updates it with one compare-and-exchange (GCRA, see
 * ff_syn_admit). The bucket is full again at full_ns (CLOCK_MONOTONIC ns);
 * it holds burst - (full_ns - now) / interval SYNs. */
struct ff_bucket {
	__u64 full_ns;
};

/* Value of ff_strikes (user space only; a map so `kite filter clear` from
 * another process can reset it and the LRU bounds it). */
struct ff_strikes {
	__u32 count;            /* strikes in the current window */
	__u32 level;            /* blocks so far: the next lasts block_seconds << level */
	__u64 window_start_ns;
	__u64 blocked_until_ns;
};

#endif
