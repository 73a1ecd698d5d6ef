// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * nodeplane XDP steering program. Attached to the uplink and to every pod host
 * interface; it redirects to the AF_XDP socket of the receive queue only the
 * traffic nodeplane owns and passes everything else to the kernel (XDP_PASS),
 * so the node keeps its own connectivity. All parameters live in maps that the
 * agent updates at run time (dataplane/src/io/steering.rs mirrors the layouts).
 *
 * Uplink: UDP to a node IP on the VXLAN port; dst in a Service CIDR; dst an
 *   externalIP/LoadBalancer IP; TCP/UDP to a node IP on a NodePort; TCP/UDP
 *   (and ICMP echo replies) to a node IP on a port/id in the masquerade range.
 * Pod interface: all IPv4 except traffic to a node IP (unless it is a NodePort).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROLE_UPLINK 1
#define ROLE_POD 2

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_8021Q 0x8100
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define ICMP_ECHOREPLY 0

/* Slots of the per-CPU decision counters (keep in step with steering.rs).
 * STAT_REDIRECT_* count decisions to steer; STAT_PASS_NO_SOCKET counts those
 * that found no socket and were passed instead. */
enum stat {
	STAT_PASS_NOT_IPV4 = 0,
	STAT_PASS_MALFORMED,
	STAT_PASS_UNKNOWN_IFACE,
	STAT_PASS_NOT_OWNED,
	STAT_PASS_TO_NODE,
	STAT_PASS_NO_SOCKET,
	STAT_REDIRECT_VXLAN,
	STAT_REDIRECT_SERVICE_CIDR,
	STAT_REDIRECT_FRONTEND_IP,
	STAT_REDIRECT_NODEPORT,
	STAT_REDIRECT_MASQ_REPLY,
	STAT_REDIRECT_POD,
	STAT_COUNT,
};

struct config {
	__u16 vxlan_port; /* host order; 0 = no overlay */
	__u16 masq_lo;    /* host order, inclusive */
	__u16 masq_hi;    /* host order, inclusive; lo > hi = none */
	__u16 pad;
};

struct iface {
	__u32 role;
	__u32 slot_base; /* XSKMAP index of this interface's queue 0 */
};

struct nodeport_key {
	__u16 port; /* host order */
	__u8 proto;
	__u8 pad;
};

struct lpm_v4_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

#define XSK_SLOTS 8192
#define QUEUES_PER_IFACE 16 /* XSKMAP slots reserved per interface */

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XSK_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct iface);
} ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} node_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} frontend_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nodeport_key);
	__type(value, __u8);
} nodeports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u8);
} service_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 slot, int action)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1;
	return action;
}

/* Counts the decision `reason`, then redirects to the queue's socket; a
 * decision that finds no socket there falls back to XDP_PASS and is also
 * counted as STAT_PASS_NO_SOCKET. */
static __always_inline int redirect(struct xdp_md *ctx, const struct iface *ifc, __u32 reason)
{
	count(reason, 0);
	if (ctx->rx_queue_index >= QUEUES_PER_IFACE)
		return count(STAT_PASS_NO_SOCKET, XDP_PASS);
	__u32 key = ifc->slot_base + ctx->rx_queue_index;
	long rc = bpf_redirect_map(&xsks, key, XDP_PASS);
	if (rc != XDP_REDIRECT)
		return count(STAT_PASS_NO_SOCKET, XDP_PASS);
	return XDP_REDIRECT;
}

SEC("xdp")
int nodeplane_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 zero = 0;

	struct iface *ifc = bpf_map_lookup_elem(&ifaces, &ifindex);
	if (!ifc)
		return count(STAT_PASS_UNKNOWN_IFACE, XDP_PASS);

	__u8 *eth = data;
	if ((void *)(eth + ETH_HLEN) > end)
		return count(STAT_PASS_MALFORMED, XDP_PASS);
	__u16 proto = ((__u16)eth[12] << 8) | eth[13];
	if (proto != ETH_P_IP)
		return count(STAT_PASS_NOT_IPV4, XDP_PASS);

	__u8 *ip = eth + ETH_HLEN;
	if ((void *)(ip + 20) > end)
		return count(STAT_PASS_MALFORMED, XDP_PASS);
	__u32 ihl = (ip[0] & 0x0f) * 4;
	if ((ip[0] >> 4) != 4 || ihl < 20)
		return count(STAT_PASS_MALFORMED, XDP_PASS);
	__u8 l4proto = ip[9];
	__u16 frag = ((__u16)(ip[6] & 0x3f) << 8) | ip[7]; /* MF bit + offset */
	__u32 daddr;
	__builtin_memcpy(&daddr, ip + 16, 4);

	/* Ports (or the ICMP echo identifier) when the L4 header is present. */
	int have_ports = 0;
	__u16 dport = 0;
	__u8 icmp_type = 0xff;
	if (frag == 0 && ihl <= 60) {
		__u8 *l4 = ip + ihl;
		if ((l4proto == IPPROTO_TCP || l4proto == IPPROTO_UDP) && (void *)(l4 + 4) <= end) {
			dport = ((__u16)l4[2] << 8) | l4[3];
			have_ports = 1;
		} else if (l4proto == IPPROTO_ICMP && (void *)(l4 + 8) <= end) {
			icmp_type = l4[0];
			dport = ((__u16)l4[4] << 8) | l4[5];
		}
	}

	int to_node = bpf_map_lookup_elem(&node_ips, &daddr) != 0;
	int nodeport = 0;
	if (to_node && have_ports) {
		struct nodeport_key nk = { .port = dport, .proto = l4proto, .pad = 0 };
		nodeport = bpf_map_lookup_elem(&nodeports, &nk) != 0;
	}

	if (ifc->role == ROLE_POD) {
		if (!to_node)
			return redirect(ctx, ifc, STAT_REDIRECT_POD);
		if (nodeport)
			return redirect(ctx, ifc, STAT_REDIRECT_NODEPORT);
		return count(STAT_PASS_TO_NODE, XDP_PASS);
	}
	if (ifc->role != ROLE_UPLINK)
		return count(STAT_PASS_UNKNOWN_IFACE, XDP_PASS);

	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (to_node) {
		if (!cfg)
			return count(STAT_PASS_NOT_OWNED, XDP_PASS);
		if (have_ports && l4proto == IPPROTO_UDP && cfg->vxlan_port != 0 &&
		    dport == cfg->vxlan_port)
			return redirect(ctx, ifc, STAT_REDIRECT_VXLAN);
		if (nodeport)
			return redirect(ctx, ifc, STAT_REDIRECT_NODEPORT);
		int echo_reply = l4proto == IPPROTO_ICMP && icmp_type == ICMP_ECHOREPLY;
		if ((have_ports || echo_reply) && dport >= cfg->masq_lo && dport <= cfg->masq_hi)
			return redirect(ctx, ifc, STAT_REDIRECT_MASQ_REPLY);
		return count(STAT_PASS_NOT_OWNED, XDP_PASS);
	}

	struct lpm_v4_key lk = { .prefixlen = 32, .addr = daddr };
	if (bpf_map_lookup_elem(&service_cidrs, &lk))
		return redirect(ctx, ifc, STAT_REDIRECT_SERVICE_CIDR);
	if (bpf_map_lookup_elem(&frontend_ips, &daddr))
		return redirect(ctx, ifc, STAT_REDIRECT_FRONTEND_IP);
	return count(STAT_PASS_NOT_OWNED, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
