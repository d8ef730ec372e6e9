// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* filter.bpf.c: kite's XDP SYN-flood and abuse filter.
 *
 * Only TCP to a listener port (or TCP whose port cannot be seen, below) is
 * looked at; everything else is XDP_PASS untouched. For those packets, in
 * order:
 *   1. source in ff_block and not expired   -> XDP_DROP (dropped_block)
 *   2. SYN without ACK, source not in ff_allow (or expired), over the
 *      source's token bucket                 -> XDP_DROP (dropped_rate)
 *   3. otherwise                              -> XDP_PASS (passed; not
 *      counted for TCP whose header cannot be seen)
 * Established traffic (no SYN, or SYN+ACK) is never rate limited. User space
 * keeps ff_block and ff_allow disjoint (a block deletes the allow entry).
 *
 * Parsing: Ethernet, then IPv4 (any IHL) or IPv6 through up to FF_EXT_MAX
 * extension headers (hop-by-hop, routing, fragment, destination options,
 * AH). TCP whose header cannot be looked at is still TCP from that source:
 *   - not in this packet (IPv4 or IPv6 non-first fragment, ESP): a blocked
 *     source's is dropped, whatever its port;
 *   - cut short, or behind more than FF_EXT_MAX extension headers: as
 *     above, and it takes a token like a SYN. Nothing legitimate sends TCP
 *     that way, and a flood that did would otherwise skip the bucket
 *     (Linux reassembles an IPv4 SYN from a tiny first fragment, and walks
 *     any number of IPv6 extension headers).
 * VLAN tags are not walked: such packets pass.
 *
 * Time is bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC at tick resolution):
 * half the per-packet cost of bpf_ktime_get_ns(); buckets refill in tick
 * steps, which keeps the average rate. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "filter.h"

#define ETH_P_IP   0x0800
#define ETH_P_IPV6 0x86DD
#define IP_OFFSET  0x1fff  /* IPv4 frag_off: offset bits */
#define IP6_OFFSET 0xfff8  /* IPv6 fragment header frag_off: offset bits */

/* IPv6 next header values (include/net/ipv6.h; macros, so not in vmlinux.h). */
#define NEXTHDR_HOP      0
#define NEXTHDR_ROUTING  43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_ESP      50
#define NEXTHDR_AUTH     51
#define NEXTHDR_DEST     60

/* Compare-and-exchange attempts on a bucket before its SYN is refused. */
#define FF_CAS_TRIES 4

/* Read-only config, set by the loader before load (the verifier sees the
 * constants and drops dead code). Ports are in network byte order. */
const volatile __u16 listen_ports[FF_PORTS_MAX] = {};
const volatile __u32 n_listen_ports = 0;
const volatile __u64 syn_interval_ns = 0; /* FF_SYN_INTERVAL_NS(rate); 0 = no SYN limit */
const volatile __u64 syn_burst_ns = 0;    /* burst * syn_interval_ns */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FF_BLOCK_MAX);
	__type(key, struct ff_key);
	__type(value, struct ff_expiry);
} ff_block SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FF_ALLOW_MAX);
	__type(key, struct ff_key);
	__type(value, struct ff_expiry);
} ff_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FF_BUCKET_MAX);
	__type(key, struct ff_key);
	__type(value, struct ff_bucket);
} ff_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FF_STRIKES_MAX);
	__type(key, struct ff_key);
	__type(value, struct ff_strikes);
} ff_strikes SEC(".maps");

/* Per-CPU: each shard's core counts without sharing a cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FF_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ff_counters SEC(".maps");

static __always_inline int ff_count(__u32 idx, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&ff_counters, &idx);

	if (c)
		*c += 1;
	return verdict;
}

static __always_inline bool ff_port_listened(__u16 dport)
{
	for (__u32 i = 0; i < FF_PORTS_MAX; i++) {
		if (i >= n_listen_ports)
			break;
		if (listen_ports[i] == dport)
			return true;
	}
	return false;
}

/* Takes one SYN from key's bucket; false if it has none.
 *
 * The bucket is GCRA, the one-word form of a token bucket: full_ns is when
 * it is full again, and a SYN at now fits if max(full_ns, now) + interval
 * <= now + burst * interval, which moves full_ns there. Each admitted SYN
 * moves full_ns by interval whichever CPU takes it, so over any span the
 * source gets at most burst + span / interval, across CPUs too. The
 * alternatives cost more or are wrong:
 *   - bpf_spin_lock: the kernel refuses a map with one in an LRU hash
 *     value (map_check_btf: ENOTSUPP on 6.1, EOPNOTSUPP on 6.18); a plain
 *     hash fills up under a spoofed flood and then tracks no new source;
 *   - per-CPU buckets: a burst of 2 does not split over 8 CPUs, and a
 *     source whose SYNs all hash to one RX queue would get rate / ncpu.
 * A refused SYN writes nothing, so a flood from one source keeps the
 * bucket's cache line shared by the CPUs instead of bouncing it. */
static __always_inline bool ff_syn_admit(const struct ff_key *key, __u64 now)
{
	struct ff_bucket *b = bpf_map_lookup_elem(&ff_buckets, key);
	__u64 seen, next, was;

	if (!b) {
		struct ff_bucket fresh = { .full_ns = now + syn_interval_ns };

		/* NOEXIST: of CPUs creating the bucket at once, one does; the
		 * others take from it below instead of each getting a full one. */
		if (!bpf_map_update_elem(&ff_buckets, key, &fresh, BPF_NOEXIST))
			return true;
		b = bpf_map_lookup_elem(&ff_buckets, key);
		if (!b)
			return true; /* evicted already: untracked, like any LRU miss */
	}
	seen = *(volatile __u64 *)&b->full_ns;
	for (__u32 i = 0; i < FF_CAS_TRIES; i++) {
		next = (seen > now ? seen : now) + syn_interval_ns;
		if (next > now + syn_burst_ns)
			return false;
		was = __sync_val_compare_and_swap(&b->full_ns, seen, next);
		if (was == seen)
			return true;
		seen = was; /* another CPU took a SYN of this source: retry on its value */
	}
	/* Other CPUs won FF_CAS_TRIES times in a row, each with a SYN of this
	 * source: it is bursting, and refusing errs on the side of the limit. */
	return false;
}

static __always_inline bool ff_unexpired(void *map, const struct ff_key *key,
					 __u64 *now)
{
	struct ff_expiry *e = bpf_map_lookup_elem(map, key);

	if (!e)
		return false;
	if (!*now)
		*now = bpf_ktime_get_coarse_ns();
	return *now < e->expires_ns;
}

/* What follows the IP header(s), for the verdict. */
enum ff_l4 {
	FF_L4_OTHER,  /* not TCP: untouched */
	FF_L4_TCP,    /* a whole TCP header at *th */
	FF_L4_TAIL,   /* maybe TCP, its header elsewhere: later fragment, ESP */
	FF_L4_HIDDEN, /* maybe TCP, maybe a SYN: header cut short or too deep */
};

static __always_inline enum ff_l4 ff_ipv4(struct iphdr *ip, void *end, struct ff_key *key,
					  struct tcphdr **th)
{
	if ((void *)(ip + 1) > end)
		return FF_L4_OTHER;
	if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
		return FF_L4_OTHER;
	key->addr[2] = bpf_htonl(0xffff);
	key->addr[3] = ip->saddr;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return FF_L4_TAIL;
	*th = (void *)ip + ip->ihl * 4;
	/* A first fragment may stop inside the TCP header (RFC 1858's tiny
	 * fragment): Linux still reassembles it into a SYN. */
	return (void *)(*th + 1) > end ? FF_L4_HIDDEN : FF_L4_TCP;
}

static __always_inline bool ff_ipv6_ext(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_FRAGMENT ||
	       nh == NEXTHDR_DEST || nh == NEXTHDR_AUTH;
}

/* The class of a packet whose walk stopped at next header nh before a TCP
 * header: chain says what TCP or more extension headers there mean (HIDDEN
 * when the walk gave up, TAIL in a later fragment). */
static __always_inline enum ff_l4 ff_ipv6_unreached(__u8 nh, enum ff_l4 chain)
{
	if (nh == IPPROTO_TCP || ff_ipv6_ext(nh))
		return chain;
	return nh == NEXTHDR_ESP ? FF_L4_TAIL : FF_L4_OTHER;
}

/* Walks at most FF_EXT_MAX extension headers to TCP. Linux walks a chain of
 * any length to TCP, so a longer one is HIDDEN, not OTHER. */
static __always_inline enum ff_l4 ff_ipv6(struct ipv6hdr *ip6, void *end, struct ff_key *key,
					  struct tcphdr **th)
{
	void *p = ip6 + 1;
	__u32 hl;
	__u8 nh;

	if ((void *)(ip6 + 1) > end)
		return FF_L4_OTHER;
	__builtin_memcpy(key->addr, &ip6->saddr, sizeof(key->addr));
	nh = ip6->nexthdr;
	for (__u32 i = 0; i < FF_EXT_MAX && nh != IPPROTO_TCP; i++) {
		struct ipv6_opt_hdr *h = p;
		struct frag_hdr *f = p;
		void *next = p + 8; /* every extension header is 8 bytes or more */

		if (!ff_ipv6_ext(nh))
			return ff_ipv6_unreached(nh, FF_L4_HIDDEN);
		if (next > end)
			return FF_L4_HIDDEN;
		/* hl: the rest of the header, in 8 bytes. For the verifier's
		 * sake (11k instructions and 13 ms to load, now 1.6k and 2 ms)
		 * each hop should leave one state that the other header types'
		 * states fit in: the fixed 8 is added apart from hl * 8, so a
		 * fragment header's 0 stays in the pointer's variable part, and
		 * fragment and AH are unlikely, so the verifier (fall-through
		 * first) meets the widest case, hl 0..255, before them. */
		hl = h->hdrlen;
		if (__builtin_expect(nh == NEXTHDR_FRAGMENT, 0)) {
			if (f->frag_off & bpf_htons(IP6_OFFSET))
				return ff_ipv6_unreached(f->nexthdr, FF_L4_TAIL);
			hl = 0; /* its second byte is reserved */
		} else if (__builtin_expect(nh == NEXTHDR_AUTH, 0)) {
			/* RFC 4302: 4-byte units minus 2, a multiple of 8 bytes in
			 * IPv6 (Linux's AH input drops the rest too). */
			if (hl & 1)
				return FF_L4_HIDDEN;
			hl >>= 1;
		}
		nh = h->nexthdr;
		p = next + hl * 8;
	}
	if (nh != IPPROTO_TCP)
		return ff_ipv6_unreached(nh, FF_L4_HIDDEN);
	*th = p;
	return (void *)(*th + 1) > end ? FF_L4_HIDDEN : FF_L4_TCP;
}

SEC("xdp")
int kite_flood_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ff_key key = {};
	struct tcphdr *th = NULL;
	enum ff_l4 l4;
	__u64 now = 0;
	bool syn;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		l4 = ff_ipv4((void *)(eth + 1), end, &key, &th);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		l4 = ff_ipv6((void *)(eth + 1), end, &key, &th);
	else
		return XDP_PASS;
	if (l4 == FF_L4_OTHER)
		return XDP_PASS;
	if (l4 == FF_L4_TCP) {
		if (!ff_port_listened(th->dest))
			return XDP_PASS;
		syn = th->syn && !th->ack;
	} else {
		/* No port to look at: a block holds for all of the source's TCP. */
		syn = l4 == FF_L4_HIDDEN;
	}

	if (ff_unexpired(&ff_block, &key, &now))
		return ff_count(FF_CNT_DROPPED_BLOCK, XDP_DROP);
	if (syn_interval_ns && syn && !ff_unexpired(&ff_allow, &key, &now)) {
		if (!now)
			now = bpf_ktime_get_coarse_ns();
		if (!ff_syn_admit(&key, now))
			return ff_count(FF_CNT_DROPPED_RATE, XDP_DROP);
	}
	return l4 == FF_L4_TCP ? ff_count(FF_CNT_PASSED, XDP_PASS) : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
