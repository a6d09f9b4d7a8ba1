// SPDX-License-Identifier: (MIT OR Apache-2.0) AND GPL-2.0
//
// baton's kernel fast path: a TC ingress program that forwards the RTP of
// established plain legs without waking the relay.
//
// The relay (relay/src/io/kernel.rs) installs one route per leg direction:
// the packet's 5-tuple in, the 5-tuple out, the SSRC it expects, the
// sequence and timestamp offsets of the outward stream and a payload type
// map. This program forwards a packet only when it is the newest in-order
// packet of that SSRC with a payload type the map takes; everything else
// (RTCP, other SSRCs, reordered or jumping packets, DTMF, strangers,
// options and fragments) goes up to the relay unchanged, and the relay
// takes the route back before it decides anything about that leg.
//
// Each route's moving state (newest sequence number and timestamp,
// counters, jitter) lives in a slot under a spin lock, and a slot is live
// only while its control word equals the route's generation. The relay
// ends a route by clearing the control word first and then reading the
// slot under the same lock: a packet that saw the route live has been
// counted by then, and a packet that comes later goes to the relay. That
// makes a handoff exact: no sequence number is ever sent twice.
//
// Built by relay/build.rs with clang -target bpf when clang is present.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define ALWAYS_INLINE static inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static long (*bpf_skb_load_bytes)(const void *skb, u32 offset, void *to, u32 len) =
    (void *)BPF_FUNC_skb_load_bytes;
static long (*bpf_l3_csum_replace)(void *skb, u32 offset, u64 from, u64 to, u64 size) =
    (void *)BPF_FUNC_l3_csum_replace;
static long (*bpf_l4_csum_replace)(void *skb, u32 offset, u64 from, u64 to, u64 flags) =
    (void *)BPF_FUNC_l4_csum_replace;
static long (*bpf_redirect_neigh)(u32 ifindex, struct bpf_redir_neigh *params, int plen, u64 flags) =
    (void *)BPF_FUNC_redirect_neigh;
static s64 (*bpf_csum_diff)(void *from, u32 from_size, void *to, u32 to_size, u32 seed) =
    (void *)BPF_FUNC_csum_diff;
static long (*bpf_skb_pull_data)(void *skb, u32 len) = (void *)BPF_FUNC_skb_pull_data;
static long (*bpf_spin_lock)(struct bpf_spin_lock *lock) = (void *)BPF_FUNC_spin_lock;
static long (*bpf_spin_unlock)(struct bpf_spin_lock *lock) = (void *)BPF_FUNC_spin_unlock;

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define LOOPBACK_IFINDEX 1
/* Every packet not forwarded here goes on as TC_ACT_UNSPEC: to the next
 * program on the hook (another relay process, another tool), then up the
 * stack. TC_ACT_OK would end the chain at this program. */
#define RTP_HEADER 12
/* A sequence jump larger than this is a restart the relay decides on
 * (RFC 3550 A.1 MAX_DROPOUT, as in relay/src/core/continuity.rs). */
#define MAX_SEQ_JUMP 3000
#define PASS_PT 0xff
#define TTL 64

/* Byte order: the program runs little-endian (x86-64, arm64). */
#define bswap16(x) __builtin_bswap16(x)
#define bswap32(x) __builtin_bswap32(x)

/* Key: the datagram as it arrives. Addresses in network order, IPv4 in the
 * first four bytes; ports in network order. */
struct route_key {
	u8 src[16];
	u8 dst[16];
	u16 sport;
	u16 dport;
	u32 family;
};

/* What to do with it; written only by the relay. */
struct route {
	u32 slot;
	u32 generation;
	u8 out_src[16];
	u8 out_dst[16];
	u16 out_sport;
	u16 out_dport;
	u32 in_ssrc;
	u32 out_ssrc;
	u32 ts_offset;
	u32 clock_rate;
	u16 seq_offset;
	/* 1: the SSRC and timestamps are rewritten too (toward the remote). */
	u8 rewrite_ssrc_ts;
	/* 1: the timestamp must move forward by at most one second. */
	u8 check_ts;
	/* CLOCK_MONOTONIC of the stream's epoch, so jitter continues the
	 * relay's own computation. */
	u64 epoch_ns;
	u8 pt_map[128];
	/* The interface toward `out_dst`, from the relay's route lookup. */
	u32 out_ifindex;
	/* The interface the peer's packets come in on (the route back to it,
	 * as strict reverse-path filtering wants): a packet with the peer's
	 * address from elsewhere is spoofed, and goes to the relay. */
	u32 in_ifindex;
};

/* A route's moving state; the program writes it, under the lock. */
struct slot {
	struct bpf_spin_lock lock;
	u32 max_seq;
	u32 last_ts;
	u32 last_step_ts;
	u64 last_ns;
	u64 packets;
	u64 bytes;
	u64 payload_bytes;
	u64 seq_advance;
	u64 seen;
	u64 jitter_x16;
	s64 transit;
	u32 last_step_seq;
	u32 has_transit;
};

/* Not preallocated: a deleted or replaced route is freed only after every
 * program that may still hold it has finished (RCU), so a route read here
 * is never another route's reusing its memory. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct route_key);
	__type(value, struct route);
} baton_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, struct slot);
} baton_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, u32);
} baton_control SEC(".maps");

/* Outcome counters for the relay's metrics: forwarded, and why not. */
enum {
	STAT_FORWARDED,
	STAT_NO_ROUTE,
	STAT_NOT_NEWEST,
	STAT_NO_NEXT_HOP,
	STAT_OTHER,
	STAT_COUNT,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, u32);
	__type(value, u64);
} baton_kstats SEC(".maps");

ALWAYS_INLINE int count(u32 what, int verdict)
{
	u64 *value = bpf_map_lookup_elem(&baton_kstats, &what);
	if (value)
		*value += 1;
	return verdict;
}

struct ipv4 {
	u8 ver_ihl;
	u8 tos;
	u16 tot_len;
	u16 id;
	u16 frag_off;
	u8 ttl;
	u8 protocol;
	u16 check;
	u32 saddr;
	u32 daddr;
};

struct ipv6 {
	u32 ver_class_flow;
	u16 payload_len;
	u8 nexthdr;
	u8 hop_limit;
	u8 saddr[16];
	u8 daddr[16];
};

struct udp {
	u16 source;
	u16 dest;
	u16 len;
	u16 check;
};

/* Length of the RTP header (fixed part, CSRCs, extension) and padding of
 * a packet of `len` bytes at `off`, or -1 if they do not fit. */
ALWAYS_INLINE int rtp_overhead(struct __sk_buff *skb, u32 off, u32 len, u8 first)
{
	u32 header = RTP_HEADER + 4 * (u32)(first & 0x0f);
	if (first & 0x10) {
		u8 ext[4];
		if (header + 4 > len)
			return -1;
		if (bpf_skb_load_bytes(skb, off + header, ext, 4) < 0)
			return -1;
		header += 4 + 4 * (((u32)ext[2] << 8) | ext[3]);
	}
	if (header > len)
		return -1;
	u32 padding = 0;
	if (first & 0x20) {
		u8 last;
		if (len == 0 || len > 0xffff)
			return -1;
		if (bpf_skb_load_bytes(skb, off + len - 1, &last, 1) < 0)
			return -1;
		padding = last;
	}
	if (header + padding > len)
		return -1;
	return (int)(header + padding);
}

SEC("classifier")
int baton_forward(struct __sk_buff *skb)
{
	/* Headers up to the RTP fixed header in the linear part. */
	u32 need = ETH_HLEN + sizeof(struct ipv6) + sizeof(struct udp) + RTP_HEADER;
	if (skb->len < ETH_HLEN + sizeof(struct ipv4) + sizeof(struct udp) + RTP_HEADER)
		return TC_ACT_UNSPEC;
	if (skb->len < need)
		need = skb->len;
	/* Several datagrams merged by GRO: each needs its own numbers. */
	if (skb->gso_segs > 1)
		return TC_ACT_UNSPEC;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need) < 0)
			return TC_ACT_UNSPEC;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	if (data + ETH_HLEN > data_end)
		return TC_ACT_UNSPEC;
	u16 proto = bswap16(*(u16 *)(data + 12));

	struct route_key key = {};
	u32 l3 = ETH_HLEN, l4;
	if (proto == ETH_P_IP) {
		struct ipv4 *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return TC_ACT_UNSPEC;
		/* No options, no fragments: the relay handles those. */
		if (ip->ver_ihl != 0x45 || ip->protocol != IPPROTO_UDP)
			return TC_ACT_UNSPEC;
		if (ip->frag_off & bswap16(0x3fff))
			return TC_ACT_UNSPEC;
		__builtin_memcpy(key.src, &ip->saddr, 4);
		__builtin_memcpy(key.dst, &ip->daddr, 4);
		key.family = 4;
		l4 = l3 + sizeof(struct ipv4);
	} else if (proto == ETH_P_IPV6) {
		struct ipv6 *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return TC_ACT_UNSPEC;
		if (ip->nexthdr != IPPROTO_UDP)
			return TC_ACT_UNSPEC;
		__builtin_memcpy(key.src, ip->saddr, 16);
		__builtin_memcpy(key.dst, ip->daddr, 16);
		key.family = 6;
		l4 = l3 + sizeof(struct ipv6);
	} else {
		return TC_ACT_UNSPEC;
	}
	struct udp *udp = data + l4;
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_UNSPEC;
	key.sport = udp->source;
	key.dport = udp->dest;
	struct route *route = bpf_map_lookup_elem(&baton_routes, &key);
	if (!route)
		return count(STAT_NO_ROUTE, TC_ACT_UNSPEC);
	if (skb->ingress_ifindex != route->in_ifindex)
		return count(STAT_OTHER, TC_ACT_UNSPEC);

	u32 rtp_off = l4 + sizeof(struct udp);
	u8 *rtp = data + rtp_off;
	if ((void *)(rtp + RTP_HEADER) > data_end)
		return count(STAT_OTHER, TC_ACT_UNSPEC);
	u32 rtp_len = (u32)bswap16(udp->len);
	if (rtp_len < sizeof(struct udp) + RTP_HEADER || rtp_off + rtp_len - sizeof(struct udp) > skb->len)
		return count(STAT_OTHER, TC_ACT_UNSPEC);
	rtp_len -= sizeof(struct udp);
	u8 first = rtp[0];
	u8 second = rtp[1];
	if ((first >> 6) != 2)
		return count(STAT_OTHER, TC_ACT_UNSPEC);
	u8 pt = second & 0x7f;
	/* RTCP multiplexed on the port (RFC 5761: types 64-95) and anything
	 * the map does not take (DTMF, RTX, unknown) go to the relay. */
	u8 out_pt = route->pt_map[pt];
	if (out_pt == PASS_PT || (pt >= 64 && pt <= 95))
		return count(STAT_OTHER, TC_ACT_UNSPEC);
	u16 seq = bswap16(*(u16 *)(rtp + 2));
	u32 ts = bswap32(*(u32 *)(rtp + 4));
	u32 ssrc = bswap32(*(u32 *)(rtp + 8));
	if (ssrc != route->in_ssrc)
		return count(STAT_OTHER, TC_ACT_UNSPEC);
	int overhead = rtp_overhead(skb, rtp_off, rtp_len, first);
	if (overhead < 0)
		return count(STAT_OTHER, TC_ACT_UNSPEC);

	/* Out through the interface the relay's route lookup chose; the
	 * neighbour subsystem fills in the link layer. A packet from another
	 * interface to a peer on this host would need its receive checksum
	 * state redone: the relay sends those. */
	u32 out_ifindex = route->out_ifindex;
	if (out_ifindex == 0 ||
	    (out_ifindex == LOOPBACK_IFINDEX && skb->ingress_ifindex != LOOPBACK_IFINDEX))
		return count(STAT_NO_NEXT_HOP, TC_ACT_UNSPEC);

	u32 slot_index = route->slot;
	struct slot *slot = bpf_map_lookup_elem(&baton_slots, &slot_index);
	u32 *live = bpf_map_lookup_elem(&baton_control, &slot_index);
	if (!slot || !live)
		return count(STAT_OTHER, TC_ACT_UNSPEC);
	u32 generation = route->generation;
	u32 rate = route->clock_rate;
	u8 check_ts = route->check_ts;
	u64 now = bpf_ktime_get_ns();
	/* Arrival in the payload's clock units since the stream's epoch, as
	 * the relay computes it for jitter (RFC 3550 A.8). */
	u64 since = now > route->epoch_ns ? now - route->epoch_ns : 0;
	u64 arrival = (since / 1000) * rate / 1000000;
	s64 transit = (s64)(s32)(u32)arrival - (s64)(s32)ts;

	int forward = 0;
	bpf_spin_lock(&slot->lock);
	if (*live == generation) {
		u16 delta = seq - (u16)slot->max_seq;
		s32 step = (s32)(ts - slot->last_ts);
		if (delta != 0 && delta <= MAX_SEQ_JUMP &&
		    (!check_ts || (step >= 0 && (u32)step <= rate))) {
			forward = 1;
			slot->seen = delta >= 64 ? 1 : (slot->seen << delta) | 1;
			slot->seq_advance += delta;
			slot->max_seq = seq;
			if (step > 0 && (u32)step <= rate) {
				slot->last_step_ts = (u32)step;
				slot->last_step_seq = delta;
			}
			slot->last_ts = ts;
			slot->last_ns = now;
			slot->packets += 1;
			slot->bytes += rtp_len;
			slot->payload_bytes += rtp_len - (u32)overhead;
			if (slot->has_transit) {
				s64 d = transit - slot->transit;
				s32 d32 = (s32)d;
				u64 distance = d32 < 0 ? (u64)(-(s64)d32) : (u64)d32;
				s64 jitter = (s64)slot->jitter_x16;
				jitter = jitter + (s64)distance - ((jitter + 8) >> 4);
				slot->jitter_x16 = jitter < 0 ? 0 : (u64)jitter;
			}
			slot->transit = transit;
			slot->has_transit = 1;
		}
	}
	bpf_spin_unlock(&slot->lock);
	if (!forward)
		return count(STAT_NOT_NEWEST, TC_ACT_UNSPEC);

	/* Rewrite. Checksums are updated by difference: one for what the
	 * pseudo-header covers (addresses), one for the rest. */
	u32 out_ssrc = route->rewrite_ssrc_ts ? route->out_ssrc : ssrc;
	u32 out_ts = route->rewrite_ssrc_ts ? ts + route->ts_offset : ts;
	u16 out_seq = seq + route->seq_offset;
	u32 old_rtp[3], new_rtp[3];
	u32 old_ports, new_ports;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + rtp_off + RTP_HEADER > data_end)
		return count(STAT_OTHER, TC_ACT_SHOT);
	rtp = data + rtp_off;
	udp = data + l4;
	__builtin_memcpy(old_rtp, rtp, RTP_HEADER);
	rtp[1] = (second & 0x80) | out_pt;
	*(u16 *)(rtp + 2) = bswap16(out_seq);
	*(u32 *)(rtp + 4) = bswap32(out_ts);
	*(u32 *)(rtp + 8) = bswap32(out_ssrc);
	__builtin_memcpy(new_rtp, rtp, RTP_HEADER);
	__builtin_memcpy(&old_ports, &udp->source, 4);
	udp->source = route->out_sport;
	udp->dest = route->out_dport;
	__builtin_memcpy(&new_ports, &udp->source, 4);
	s64 rest = bpf_csum_diff(old_rtp, RTP_HEADER, new_rtp, RTP_HEADER, 0);
	rest = bpf_csum_diff(&old_ports, 4, &new_ports, 4, (u32)rest);

	u32 csum_off = l4 + 6;
	if (key.family == 4) {
		struct ipv4 *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return count(STAT_OTHER, TC_ACT_SHOT);
		u32 old_addrs[2] = {ip->saddr, ip->daddr};
		u16 old_ttl = *(u16 *)&ip->ttl;
		u16 old_tos = *(u16 *)&ip->ver_ihl;
		__builtin_memcpy(&ip->saddr, route->out_src, 4);
		__builtin_memcpy(&ip->daddr, route->out_dst, 4);
		/* As the relay's own sockets send: TTL 64, TOS 0. */
		ip->ttl = TTL;
		ip->tos = 0;
		u32 new_addrs[2] = {ip->saddr, ip->daddr};
		u16 new_ttl = *(u16 *)&ip->ttl;
		u16 new_tos = *(u16 *)&ip->ver_ihl;
		s64 addrs = bpf_csum_diff(old_addrs, 8, new_addrs, 8, 0);
		bpf_l3_csum_replace(skb, l3 + 10, 0, addrs, 0);
		bpf_l3_csum_replace(skb, l3 + 10, old_ttl, new_ttl, 2);
		bpf_l3_csum_replace(skb, l3 + 10, old_tos, new_tos, 2);
		bpf_l4_csum_replace(skb, csum_off, 0, addrs, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0);
		bpf_l4_csum_replace(skb, csum_off, 0, rest, BPF_F_MARK_MANGLED_0);
	} else {
		struct ipv6 *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return count(STAT_OTHER, TC_ACT_SHOT);
		u32 old_addrs[8], new_addrs[8];
		__builtin_memcpy(old_addrs, ip->saddr, 32);
		__builtin_memcpy(ip->saddr, route->out_src, 16);
		__builtin_memcpy(ip->daddr, route->out_dst, 16);
		ip->hop_limit = TTL;
		/* Traffic class 0 (its 8 bits straddle the first two bytes);
		 * the pseudo-header does not cover it. */
		ip->ver_class_flow &= bswap32(0xf00fffff);
		__builtin_memcpy(new_addrs, ip->saddr, 32);
		s64 addrs = bpf_csum_diff(old_addrs, 32, new_addrs, 32, 0);
		bpf_l4_csum_replace(skb, csum_off, 0, addrs, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0);
		bpf_l4_csum_replace(skb, csum_off, 0, rest, BPF_F_MARK_MANGLED_0);
	}
	long verdict = bpf_redirect_neigh(out_ifindex, 0, 0, 0);
	if (verdict == TC_ACT_REDIRECT)
		count(STAT_FORWARDED, 0);
	return verdict;
}

char _license[] SEC("license") = "Dual MIT/GPL";
