#!/usr/bin/env python3
"""Small, bounded network clients for the lab (run them inside a namespace with
`ip netns exec NS python3 tests/lab/nettool.py ...`). Every command has a timeout
and exits 0 on success, 1 on failure, printing what it got.

  ping DST [-c N]         ICMP echo over a raw socket (no ping binary needed)
  tcp DST PORT [--line L] one line to the pod server, prints its answer
  http DST PORT           GET /, prints the body
  udp DST PORT [--msg M]  one datagram, prints the answer
"""
import argparse
import os
import socket
import struct
import sys
import time


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(dst, count, timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    ok = 0
    for seq in range(1, count + 1):
        payload = b"nodeplane-lab-%d" % seq
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload
        start = time.monotonic()
        sock.sendto(pkt, (dst, 0))
        got = False
        while not got:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, addr = sock.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (data[0] & 0x0F) * 4
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if addr[0] == dst and typ == 0 and rid == ident and rseq == seq:
                got = True
                print("reply from %s seq=%d time=%.2fms" % (dst, seq, (time.monotonic() - start) * 1e3))
        if got:
            ok += 1
        else:
            print("no reply from %s seq=%d" % (dst, seq))
    return ok == count


def tcp(dst, port, line, timeout):
    with socket.create_connection((dst, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(line.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    print(buf.decode(errors="replace").strip())
    return buf.endswith(b"\n")


def http(dst, port, timeout):
    with socket.create_connection((dst, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    print(body.decode(errors="replace").strip())
    return head.startswith(b"HTTP/1.0 200")


def udp(dst, port, msg, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    s.sendto(msg.encode(), (dst, port))
    data, addr = s.recvfrom(65535)
    print(data.decode(errors="replace").strip())
    return data.endswith(msg.encode())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=2.0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("-c", "--count", type=int, default=1)
    p = sub.add_parser("tcp")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("--line", default="hello")
    p = sub.add_parser("http")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p = sub.add_parser("udp")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("--msg", default="hello")
    a = ap.parse_args()
    try:
        if a.cmd == "ping":
            ok = ping(a.dst, min(a.count, 100), a.timeout)
        elif a.cmd == "tcp":
            ok = tcp(a.dst, a.port, a.line, a.timeout)
        elif a.cmd == "http":
            ok = http(a.dst, a.port, a.timeout)
        else:
            ok = udp(a.dst, a.port, a.msg, a.timeout)
    except OSError as e:
        print("%s %s: %s" % (a.cmd, a.dst, e), file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
