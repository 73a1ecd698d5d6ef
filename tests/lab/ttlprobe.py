#!/usr/bin/env python3
"""A traceroute hop, the way `traceroute -U` probes: one UDP datagram to DST:PORT
with TTL (IP hop limit) TTL from a connected socket with IP_RECVERR on, then the
ICMP error the kernel queued for it, read from the socket's error queue.

Prints one JSON object: {"type": T, "code": C, "offender": "a.b.c.d"} for an
ICMP error (offender: the address that sent it), {"answer": "..."} when the
datagram was answered instead, or {"timeout": true} after WAIT seconds.

  ttlprobe.py DST PORT TTL [WAIT]
"""
import json
import select
import socket
import struct
import sys
import time

IP_RECVERR = 11
SO_EE_ORIGIN_ICMP = 2


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    dst, port, ttl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    wait = float(sys.argv[4]) if len(sys.argv) == 5 else 3.0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.setblocking(False)
    s.connect((dst, port))
    s.send(b"nodeplane ttl probe")
    deadline = time.time() + wait
    while time.time() < deadline:
        select.select([s], [], [s], 0.1)
        try:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            try:
                data = s.recv(4096)
                print(json.dumps({"answer": data.decode(errors="replace")}))
                return
            except (BlockingIOError, ConnectionRefusedError, OSError):
                continue
        for level, kind, d in anc:
            if level == socket.SOL_IP and kind == IP_RECVERR and len(d) >= 24:
                _errno, origin, icmp_type, code, _pad, _info, _data = struct.unpack("=IBBBBII", d[:16])
                if origin != SO_EE_ORIGIN_ICMP:
                    continue
                offender = socket.inet_ntoa(d[20:24])  # sockaddr_in: family, port, addr
                print(json.dumps({"type": icmp_type, "code": code, "offender": offender}))
                return
    print(json.dumps({"timeout": True}))


if __name__ == "__main__":
    main()
