/* testpkt.h: packets and a loaded-but-unattached filter for
 * bpf_prog_test_run_opts (bpf/filter_test.c, bench/flood_filter_bench.c).
 * Include after <linux/types.h>, bpf/filter.h and filter.skel.h. */
#ifndef KITE_BPF_TESTPKT_H
#define KITE_BPF_TESTPKT_H

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define TESTPKT_MAX 512
#define TCPF_FIN_ 0x01
#define TCPF_SYN_ 0x02
#define TCPF_ACK_ 0x10

enum testpkt_shape {
	TP_PLAIN,
	TP_TRUNCATED,   /* TCP header cut short (IPv4: a tiny first fragment) */
	TP_FRAGMENT,    /* IPv4 non-first fragment */
	TP_IP_OPTIONS,  /* IPv4 IHL 6 */
	TP_EXT_CUT,     /* IPv6: ends 4 bytes into the last extension header */
	TP_UDP,
	TP_ARP,
};

struct testpkt {
	const char *src;        /* IPv4 or IPv6 literal */
	uint16_t dport;
	uint8_t flags;          /* TCP flags */
	enum testpkt_shape shape;
	/* IPv6 extension headers in order, one letter each: h hop-by-hop (16
	 * bytes), r routing (24), d destination options (8), a AH (24: its
	 * length counts 4-byte units; A: 20, malformed in IPv6), f first
	 * fragment (offset 0, more follow), l later fragment (offset 1480:
	 * what follows is payload), e ESP (what follows is ciphertext).
	 * NULL or "": none. */
	const char *ext;
};

/* Writes extension header c at h, links it from *nh and points *nh at its
 * own next header field; returns its length. */
static inline unsigned testpkt_ext(char c, unsigned char *h, uint8_t **nh)
{
	unsigned len = 8;

	switch (c) {
	case 'h': **nh = 0; len = 16; break;
	case 'd': **nh = 60; break;
	case 'r': **nh = 43; h[1] = 2; *nh = h; return 24; /* type 0, segments left 0 */
	case 'a': **nh = 51; h[1] = 4; *nh = h; return 24;
	case 'A': **nh = 51; h[1] = 3; *nh = h; return 20; /* not a multiple of 8 */
	case 'f': **nh = 44; h[3] = 1; *nh = h; return 8;
	case 'l': **nh = 44; h[2] = 1480 >> 8; h[3] = 1480 & 0xff; *nh = h; return 8;
	/* e, ESP: the real next header is encrypted in the trailer; the
	 * caller's write of it lands in the sequence number. */
	default: **nh = 50; *nh = h + 7; return 8;
	}
	h[1] = (uint8_t)(len / 8 - 1);
	h[2] = 1;                  /* PadN option over the rest */
	h[3] = (uint8_t)(len - 4);
	*nh = h;
	return len;
}

/* Builds the frame into buf (TESTPKT_MAX bytes); returns its length. */
static inline unsigned testpkt_build(const struct testpkt *p, unsigned char *buf)
{
	struct ethhdr *eth = (struct ethhdr *)buf;
	struct tcphdr *th;
	unsigned char *l4, *last_ext = NULL;
	uint8_t *nh;
	unsigned len;

	memset(buf, 0, TESTPKT_MAX);
	memset(eth->h_dest, 0x02, ETH_ALEN);
	memset(eth->h_source, 0x04, ETH_ALEN);
	if (p->shape == TP_ARP) {
		eth->h_proto = htons(ETH_P_ARP);
		return 60;
	}
	if (strchr(p->src, ':')) {
		struct ipv6hdr *ip6 = (struct ipv6hdr *)(eth + 1);

		eth->h_proto = htons(ETH_P_IPV6);
		ip6->version = 6;
		ip6->hop_limit = 64;
		inet_pton(AF_INET6, p->src, &ip6->saddr);
		inet_pton(AF_INET6, "2001:db8::1", &ip6->daddr);
		l4 = (unsigned char *)(ip6 + 1);
		nh = &ip6->nexthdr;
		for (const char *e = p->ext; e && *e; e++) {
			last_ext = l4;
			l4 += testpkt_ext(*e, l4, &nh);
		}
		*nh = p->shape == TP_UDP ? IPPROTO_UDP : IPPROTO_TCP;
		len = (unsigned)(l4 - buf) + sizeof(*th);
		ip6->payload_len = htons((uint16_t)(len - sizeof(*eth) - sizeof(*ip6)));
	} else {
		struct iphdr *ip = (struct iphdr *)(eth + 1);
		unsigned ihl = p->shape == TP_IP_OPTIONS ? 6 : 5;

		eth->h_proto = htons(ETH_P_IP);
		ip->version = 4;
		ip->ihl = ihl & 0xf;
		ip->ttl = 64;
		ip->protocol = p->shape == TP_UDP ? IPPROTO_UDP : IPPROTO_TCP;
		inet_pton(AF_INET, p->src, &ip->saddr);
		inet_pton(AF_INET, "10.0.0.254", &ip->daddr);
		if (p->shape == TP_FRAGMENT)
			ip->frag_off = htons(185); /* offset 1480 */
		l4 = (unsigned char *)ip + ihl * 4;
		len = (unsigned)(l4 - buf) + sizeof(*th);
		ip->tot_len = htons((uint16_t)(len - sizeof(*eth)));
	}
	th = (struct tcphdr *)l4; /* a UDP packet reuses the first 4 bytes: ports */
	th->source = htons(40000);
	th->dest = htons(p->dport);
	th->doff = 5;
	th->window = htons(64240);
	l4[13] = p->flags;
	if (p->shape == TP_TRUNCATED)
		len -= 8;
	if (p->shape == TP_EXT_CUT && last_ext)
		len = (unsigned)(last_ext - buf) + 4;
	return len;
}

/* Runs the program once (or repeat times) on the frame; returns the verdict
 * or -errno; *ns_per_run gets the kernel's average when non-NULL. */
static inline int testpkt_run(int prog_fd, const struct testpkt *p, unsigned repeat,
			      uint32_t *ns_per_run)
{
	unsigned char buf[TESTPKT_MAX], out[TESTPKT_MAX];
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = buf, .data_out = out,
		    .data_size_out = sizeof(out), .repeat = repeat);
	int rc;

	o.data_size_in = testpkt_build(p, buf);
	rc = bpf_prog_test_run_opts(prog_fd, &o);
	if (rc)
		return rc;
	if (ns_per_run)
		*ns_per_run = o.duration;
	return (int)o.retval;
}

static inline int testpkt_key(const char *src, struct ff_key *key)
{
	memset(key, 0, sizeof(*key));
	if (inet_pton(AF_INET, src, &key->addr[3]) == 1) {
		key->addr[2] = htonl(0xffff);
		return 0;
	}
	return inet_pton(AF_INET6, src, key->addr) == 1 ? 0 : -1;
}

static inline uint64_t testpkt_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Sets expiry (monotonic ns) for src in an ff_expiry map. */
static inline int testpkt_expiry(struct bpf_map *map, const char *src, uint64_t expires_ns)
{
	struct ff_key key;
	struct ff_expiry e = { .expires_ns = expires_ns };

	if (testpkt_key(src, &key))
		return -1;
	return bpf_map__update_elem(map, &key, sizeof(key), &e, sizeof(e), BPF_ANY);
}

/* The filter, loaded, not attached: listener port 1883, rate/burst as given. */
static inline struct filter_bpf *testpkt_load(uint32_t rate, uint32_t burst)
{
	struct filter_bpf *skel = filter_bpf__open();

	if (!skel)
		return NULL;
	skel->rodata->listen_ports[0] = htons(1883);
	skel->rodata->listen_ports[1] = htons(8883);
	skel->rodata->n_listen_ports = 2;
	skel->rodata->syn_interval_ns = rate ? FF_SYN_INTERVAL_NS(rate) : 0;
	skel->rodata->syn_burst_ns = (uint64_t)burst * skel->rodata->syn_interval_ns;
	if (filter_bpf__load(skel)) {
		filter_bpf__destroy(skel);
		return NULL;
	}
	return skel;
}

#endif
