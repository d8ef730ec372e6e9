// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* filter.bpf.c: kite's XDP SYN-flood and abuse filter.
 *
 * Only TCP to a listener port is looked at; everything else is XDP_PASS
 * untouched. For those packets, in order:
 *   1. source in ff_block and not expired   -> XDP_DROP (dropped_block)
 *   2. SYN without ACK, source not in ff_allow (or expired), over the
 *      source's token bucket                 -> XDP_DROP (dropped_rate)
 *   3. otherwise                              -> XDP_PASS (passed)
 * Established traffic (no SYN, or SYN+ACK) is never rate limited. User space
 * keeps ff_block and ff_allow disjoint (a block deletes the allow entry).
 *
 * Parsing: Ethernet, then IPv4 (any IHL; non-first fragments pass) or IPv6
 * whose next header is TCP. IPv6 extension headers and VLAN tags are not
 * walked: such packets pass.
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
#define IP_OFFSET  0x1fff

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

SEC("xdp")
int kite_flood_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ff_key key = {};
	struct tcphdr *th;
	__u64 now = 0;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return XDP_PASS;
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return XDP_PASS; /* non-first fragment: no TCP header */
		th = (void *)ip + ip->ihl * 4;
		key.addr[2] = bpf_htonl(0xffff);
		key.addr[3] = ip->saddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		if (ip6->nexthdr != IPPROTO_TCP)
			return XDP_PASS; /* extension headers: not walked */
		th = (void *)(ip6 + 1);
		__builtin_memcpy(key.addr, &ip6->saddr, sizeof(key.addr));
	} else {
		return XDP_PASS;
	}
	if ((void *)(th + 1) > end)
		return XDP_PASS;
	if (!ff_port_listened(th->dest))
		return XDP_PASS;

	if (ff_unexpired(&ff_block, &key, &now))
		return ff_count(FF_CNT_DROPPED_BLOCK, XDP_DROP);
	if (syn_interval_ns && th->syn && !th->ack && !ff_unexpired(&ff_allow, &key, &now)) {
		if (!now)
			now = bpf_ktime_get_coarse_ns();
		if (!ff_syn_admit(&key, now))
			return ff_count(FF_CNT_DROPPED_RATE, XDP_DROP);
	}
	return ff_count(FF_CNT_PASSED, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
