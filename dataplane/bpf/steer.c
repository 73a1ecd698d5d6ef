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
 * Both, to a node IP:
 *   - an ICMP error (destination unreachable, time exceeded, parameter
 *     problem) whose quoted packet left from a NodePort or from a port/echo id
 *     in the masquerade range: it belongs to a flow nodeplane translated;
 *   - a later fragment (offset > 0) of a datagram whose first fragment was
 *     steered here: the first fragment's decision is remembered in an LRU map
 *     keyed by (src, dst, IP id, protocol). A later fragment that arrives
 *     before its first goes to the kernel (the documented gap: the kernel
 *     holds it until its reassembly timeout). Fragments to a Service or
 *     frontend IP and all fragments on pod interfaces need no memory: the
 *     destination alone decides.
 *
 * A second program, nodeplane_local (tc egress of the node's loopback), gives
 * nodeplane the node's own connections to its NodePorts: the kernel delivers a
 * packet to one of its own addresses through `lo`, never through a receive
 * hook, so a TCP/UDP/SCTP packet to a node IP NodePorts answer on
 * (nodePortAddresses) whose destination port is a NodePort gets the host
 * interface's MACs and is redirected out of its kernel end (nph0); nodeplane
 * receives it on nph1 like the node's ClusterIP connections. With localhost
 * NodePorts on (kube-proxy iptables mode's localhostNodePorts), so is one
 * from 127.0.0.0/8 to 127.0.0.0/8. Everything else on `lo` goes on untouched.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
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
#define IPPROTO_SCTP 132
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

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
	STAT_REDIRECT_ICMP_ERROR,
	STAT_REDIRECT_FRAGMENT,
	STAT_LOCAL_NODEPORT,	     /* nodeplane_local: redirected to nph0 */
	STAT_LOCAL_NODEPORT_TOO_BIG, /* nodeplane_local: dropped, over nph0's MTU */
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

/* A datagram whose first fragment went to a socket (see the header). */
struct frag_key {
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 id;    /* network order */
	__u8 proto;
	__u8 pad;
};

#define FRAG_ENTRIES 4096

/* Where nodeplane_local sends the node's NodePort packets: the host
 * interface's kernel end. ifindex 0: nowhere (the program passes all). */
struct local_redirect {
	__u32 ifindex; /* nph0 */
	__u32 mtu;     /* nph0's: a longer packet that is no GSO burst is dropped */
	__u8 macs[12]; /* destination (nph1), then source (nph0) */
	__u32 localhost; /* 1: NodePorts on 127.0.0.0/8 too */
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

/* node_ips values: a node IP; one NodePorts answer on (nodePortAddresses). */
#define NODE_IP 1
#define NODE_IP_NODEPORTS 2

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
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FRAG_ENTRIES);
	__type(key, struct frag_key);
	__type(value, __u8);
} frag_steered SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct local_redirect);
} local_redirect SEC(".maps");

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

/* Is (proto, port) a NodePort? `port` in host order. */
static __always_inline int is_nodeport(__u8 proto, __u16 port)
{
	struct nodeport_key nk = { .port = port, .proto = proto, .pad = 0 };
	return bpf_map_lookup_elem(&nodeports, &nk) != 0;
}

/* An ICMP error to a node IP quoting a packet the node sent from a NodePort
 * (a Service reply) or from a masquerade port or echo id: nodeplane's flow.
 * `l4` points at the ICMP header (8 bytes, checked by the caller). */
static __always_inline int icmp_error_owned(__u8 *l4, void *end, const struct config *cfg,
					    int nodeports)
{
	if ((void *)(l4 + 8) > end)
		return 0;
	__u8 t = l4[0];
	if (t != ICMP_DEST_UNREACH && t != ICMP_TIME_EXCEEDED && t != ICMP_PARAMETERPROB)
		return 0;
	__u8 *q = l4 + 8; /* the quoted IP header */
	if ((void *)(q + 20) > end)
		return 0;
	__u32 qihl = (q[0] & 0x0f) * 4;
	if ((q[0] >> 4) != 4 || qihl < 20)
		return 0;
	__u8 qproto = q[9];
	__u8 *ql4 = q + qihl;
	if ((void *)(ql4 + 8) > end)
		return 0;
	__u16 sport;
	if (qproto == IPPROTO_TCP || qproto == IPPROTO_UDP || qproto == IPPROTO_SCTP) {
		sport = ((__u16)ql4[0] << 8) | ql4[1];
		/* A NodePort reply left from a node IP NodePorts answer on. */
		if (nodeports && is_nodeport(qproto, sport))
			return 1;
	} else if (qproto == IPPROTO_ICMP && ql4[0] == ICMP_ECHO) {
		sport = ((__u16)ql4[4] << 8) | ql4[5];
	} else {
		return 0;
	}
	return cfg && sport >= cfg->masq_lo && sport <= cfg->masq_hi;
}

static __always_inline struct frag_key frag_key_of(const __u8 *ip)
{
	struct frag_key k = { .proto = ip[9], .pad = 0 };
	__builtin_memcpy(&k.saddr, ip + 12, 4);
	__builtin_memcpy(&k.daddr, ip + 16, 4);
	__builtin_memcpy(&k.id, ip + 4, 2);
	return k;
}

/* Redirects a frame to a node IP that nodeplane owns; a first fragment's
 * decision is remembered for the datagram's later fragments. */
static __always_inline int steer_to_node(struct xdp_md *ctx, const struct iface *ifc,
					 const __u8 *ip, __u16 frag, __u32 reason)
{
	if (frag & IP_MF) {
		struct frag_key k = frag_key_of(ip);
		__u8 one = 1;
		bpf_map_update_elem(&frag_steered, &k, &one, BPF_ANY);
	}
	return redirect(ctx, ifc, reason);
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

	/* Ports (or the ICMP echo identifier) when the L4 header is present:
	 * unfragmented or a first fragment. */
	int have_ports = 0;
	__u16 dport = 0;
	__u8 icmp_type = 0xff;
	if ((frag & IP_OFFSET) == 0 && ihl <= 60) {
		__u8 *l4 = ip + ihl;
		if ((l4proto == IPPROTO_TCP || l4proto == IPPROTO_UDP || l4proto == IPPROTO_SCTP) &&
		    (void *)(l4 + 4) <= end) {
			dport = ((__u16)l4[2] << 8) | l4[3];
			have_ports = 1;
		} else if (l4proto == IPPROTO_ICMP && (void *)(l4 + 8) <= end) {
			icmp_type = l4[0];
			dport = ((__u16)l4[4] << 8) | l4[5];
		}
	}

	__u8 *node_ip = bpf_map_lookup_elem(&node_ips, &daddr);
	int to_node = node_ip != 0;
	/* Only frames to a node IP need the config (VXLAN port, masquerade range). */
	struct config *cfg = to_node ? bpf_map_lookup_elem(&config, &zero) : 0;
	if (to_node) {
		/* What every role steers to a node IP: later fragments of a datagram
		 * whose first was steered, ICMP errors about nodeplane's flows. */
		if (frag & IP_OFFSET) {
			struct frag_key k = frag_key_of(ip);
			if (bpf_map_lookup_elem(&frag_steered, &k))
				return redirect(ctx, ifc, STAT_REDIRECT_FRAGMENT);
		}
		if (icmp_type != 0xff &&
		    icmp_error_owned(ip + ihl, end, cfg, *node_ip & NODE_IP_NODEPORTS))
			return steer_to_node(ctx, ifc, ip, frag, STAT_REDIRECT_ICMP_ERROR);
	}
	int nodeport = 0;
	if (to_node && have_ports && (*node_ip & NODE_IP_NODEPORTS))
		nodeport = is_nodeport(l4proto, dport);

	if (ifc->role == ROLE_POD) {
		if (!to_node)
			return redirect(ctx, ifc, STAT_REDIRECT_POD);
		if (nodeport)
			return steer_to_node(ctx, ifc, ip, frag, STAT_REDIRECT_NODEPORT);
		return count(STAT_PASS_TO_NODE, XDP_PASS);
	}
	if (ifc->role != ROLE_UPLINK)
		return count(STAT_PASS_UNKNOWN_IFACE, XDP_PASS);

	if (to_node) {
		if (!cfg)
			return count(STAT_PASS_NOT_OWNED, XDP_PASS);
		if (have_ports && l4proto == IPPROTO_UDP && cfg->vxlan_port != 0 &&
		    dport == cfg->vxlan_port)
			return redirect(ctx, ifc, STAT_REDIRECT_VXLAN);
		if (nodeport)
			return steer_to_node(ctx, ifc, ip, frag, STAT_REDIRECT_NODEPORT);
		int echo_reply = l4proto == IPPROTO_ICMP && icmp_type == ICMP_ECHOREPLY;
		if ((have_ports || echo_reply) && dport >= cfg->masq_lo && dport <= cfg->masq_hi)
			return steer_to_node(ctx, ifc, ip, frag, STAT_REDIRECT_MASQ_REPLY);
		return count(STAT_PASS_NOT_OWNED, XDP_PASS);
	}

	struct lpm_v4_key lk = { .prefixlen = 32, .addr = daddr };
	if (bpf_map_lookup_elem(&service_cidrs, &lk))
		return redirect(ctx, ifc, STAT_REDIRECT_SERVICE_CIDR);
	if (bpf_map_lookup_elem(&frontend_ips, &daddr))
		return redirect(ctx, ifc, STAT_REDIRECT_FRONTEND_IP);
	return count(STAT_PASS_NOT_OWNED, XDP_PASS);
}

SEC("tc")
int nodeplane_local(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct local_redirect *to = bpf_map_lookup_elem(&local_redirect, &zero);
	if (!to || to->ifindex == 0 || skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	__u8 ip[20];
	if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(ip)) < 0)
		return TC_ACT_OK;
	__u32 ihl = (ip[0] & 0x0f) * 4;
	__u8 l4proto = ip[9];
	if ((ip[0] >> 4) != 4 || ihl < 20 ||
	    (l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP && l4proto != IPPROTO_SCTP))
		return TC_ACT_OK;
	/* Nothing is fragmented on `lo` (its MTU is 64 KiB). */
	if ((ip[6] & 0x3f) || ip[7])
		return TC_ACT_OK;
	__u32 daddr;
	__builtin_memcpy(&daddr, ip + 16, 4);
	if (ip[16] == 127) {
		if (!to->localhost || ip[12] != 127)
			return TC_ACT_OK;
	} else {
		__u8 *node_ip = bpf_map_lookup_elem(&node_ips, &daddr);
		if (!node_ip || !(*node_ip & NODE_IP_NODEPORTS))
			return TC_ACT_OK;
	}
	__u8 ports[4];
	if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, ports, sizeof(ports)) < 0)
		return TC_ACT_OK;
	if (!is_nodeport(l4proto, ((__u16)ports[2] << 8) | ports[3]))
		return TC_ACT_OK;
	/* A GSO burst is cut to nph0's MTU on the way out (nph0 has no
	 * offloads while nph1 runs XDP); a longer single datagram would be
	 * dropped by the veth, so it is dropped here, counted. */
	if (skb->gso_segs <= 1 && skb->len > to->mtu + ETH_HLEN)
		return count(STAT_LOCAL_NODEPORT_TOO_BIG, TC_ACT_SHOT);
	if (bpf_skb_store_bytes(skb, 0, to->macs, sizeof(to->macs), 0) < 0)
		return TC_ACT_OK;
	count(STAT_LOCAL_NODEPORT, 0);
	return bpf_redirect(to->ifindex, 0);
}

char _license[] SEC("license") = "Dual BSD/GPL";
