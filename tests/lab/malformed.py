#!/usr/bin/python3
"""Sends malformed frames into a nodeplane node with scapy (Debian's python3-scapy,
hence /usr/bin/python3) from inside a lab namespace, and says how many of them
the node's XDP steering program hands to nodeplane.

  uplink: from the external client's eth0 to the node's MAC: VXLAN frames
          truncated at every offset, inner frames truncated at every offset
          (outer lengths consistent), bad VXLAN flags, an unknown VNI, a tiny
          inner frame, bad inner and outer IHL.
  pod:    from a pod's eth0 to its host interface: an IPv4/UDP frame truncated
          at every offset, bad IHL (too small, past the end), a bad version.

Prints one JSON object: {"sent": N, "steered": M, "kinds": {kind: count}}.
"steered" follows the XDP program's rules (dataplane/bpf/steer.c) for the
frames it redirects; every steered frame must end as one counted drop. The rest
are passed to the kernel, which drops them as it would without nodeplane.
Bounded: a fixed list of frames, sent once.
"""
import argparse
import json
import sys

from scapy.all import IP, UDP, Ether, Raw, conf, sendp  # noqa: E402
from scapy.layers.vxlan import VXLAN

conf.verb = 0


def ip_header_ok(b):
    """Ethernet + a minimal IPv4 header as the steering program checks them."""
    if len(b) < 14 or b[12:14] != b"\x08\x00" or len(b) < 34:
        return False
    return (b[14] >> 4) == 4 and (b[14] & 0x0F) * 4 >= 20


def steered_uplink(b, node_ip, vxlan_port):
    if not ip_header_ok(b):
        return False
    ihl = (b[14] & 0x0F) * 4
    if bytes(b[30:34]) != node_ip:
        return False
    frag = ((b[20] & 0x3F) << 8) | b[21]
    l4 = 14 + ihl
    if frag != 0 or ihl > 60 or b[23] != 17 or len(b) < l4 + 4:
        return False
    return int.from_bytes(b[l4 + 2:l4 + 4], "big") == vxlan_port


def steered_pod(b, node_ips):
    if not ip_header_ok(b):
        return False
    return bytes(b[30:34]) not in node_ips


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["uplink", "pod"])
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--node-ip", required=True, help="the node's underlay IP")
    ap.add_argument("--src-ip", required=True)
    ap.add_argument("--vxlan-port", type=int, default=8472)
    ap.add_argument("--vni", type=int, default=1)
    ap.add_argument("--inner-src", default="198.19.3.10")
    ap.add_argument("--inner-dst", default="198.19.1.10")
    ap.add_argument("--dst", default="198.19.3.10", help="pod mode: destination")
    a = ap.parse_args()

    src_mac = open(f"/sys/class/net/{a.iface}/address").read().strip()
    frames = []  # (kind, bytes)

    if a.mode == "uplink":
        inner = bytes(Ether(src="02:00:00:00:03:01", dst="02:00:00:00:01:01")
                      / IP(src=a.inner_src, dst=a.inner_dst, ttl=64)
                      / UDP(sport=40000, dport=5353) / Raw(b"malformed-probe"))

        def outer(payload, flags=0x08, vni=a.vni, ihl=None):
            ip = IP(src=a.src_ip, dst=a.node_ip, ttl=64)
            if ihl is not None:
                ip.ihl = ihl
            return bytes(Ether(src=src_mac, dst=a.dst_mac) / ip
                         / UDP(sport=50000, dport=a.vxlan_port)
                         / VXLAN(flags=flags, vni=vni) / Raw(payload))

        good = outer(inner)
        for cut in range(len(good)):
            frames.append(("outer_truncated", good[:cut]))
        for cut in range(len(inner)):
            frames.append(("inner_truncated", outer(inner[:cut])))
        frames.append(("vxlan_flags_zero", outer(inner, flags=0x00)))
        frames.append(("vxlan_flags_extra", outer(inner, flags=0x0C)))
        frames.append(("unknown_vni", outer(inner, vni=4242)))
        frames.append(("tiny_inner", outer(inner[:10])))
        bad = bytearray(inner)
        bad[14] = 0x44  # inner IHL 4 (< 5)
        frames.append(("inner_ihl_small", outer(bytes(bad))))
        bad[14] = 0x4F  # inner IHL 15: options past the end of the packet
        frames.append(("inner_ihl_past_end", outer(bytes(bad))))
        bad = bytearray(good)
        bad[14] = 0x44
        frames.append(("outer_ihl_small", bytes(bad)))
        node_ip = bytes(int(x) for x in a.node_ip.split("."))
        steered = [steered_uplink(b, node_ip, a.vxlan_port) for _, b in frames]
    else:
        good = bytes(Ether(src=src_mac, dst=a.dst_mac)
                     / IP(src=a.src_ip, dst=a.dst, ttl=64)
                     / UDP(sport=40001, dport=5353) / Raw(b"malformed-probe"))
        for cut in range(len(good)):
            frames.append(("truncated", good[:cut]))
        bad = bytearray(good)
        bad[14] = 0x44
        frames.append(("ihl_small", bytes(bad)))
        bad[14] = 0x4F
        frames.append(("ihl_past_end", bytes(bad)))
        bad[14] = 0x65  # version 6 in an IPv4 ethertype
        frames.append(("bad_version", bytes(bad)))
        bad = bytearray(good)
        bad[16:18] = (9999).to_bytes(2, "big")  # total length past the end
        frames.append(("total_length_past_end", bytes(bad)))
        bad = bytearray(good)
        bad[38:40] = (200).to_bytes(2, "big")  # UDP length past the end
        frames.append(("udp_length_past_end", bytes(bad)))
        node_ips = {bytes(int(x) for x in a.node_ip.split("."))}
        steered = [steered_pod(b, node_ips) for _, b in frames]

    kinds = {}
    for (kind, b), s in zip(frames, steered):
        # veth delivers what it is given; zero-length frames cannot be sent.
        # A packet socket refuses frames shorter than an Ethernet header.
        if len(b) < 14:
            continue
        sendp(Raw(b), iface=a.iface)
        k = kinds.setdefault(kind, [0, 0])
        k[0] += 1
        k[1] += int(s)
    sent = sum(v[0] for v in kinds.values())
    print(json.dumps({"sent": sent, "steered": sum(v[1] for v in kinds.values()),
                      "kinds": {k: {"sent": v[0], "steered": v[1]} for k, v in kinds.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
