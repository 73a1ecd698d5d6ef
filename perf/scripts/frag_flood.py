#!/usr/bin/env python3
"""Sends COUNT later IPv4 fragments (offset 1480, MF set, 1,000 bytes, random
IP ids: none of them ever has a first fragment) of UDP from SRC to DST, through
a raw socket (IP_HDRINCL: the kernel sends the header as written), in at most
SECS seconds. Prints how many it sent. For perf/frag-flood (a benchmark).

  frag_flood.py SRC DST COUNT SECS
"""
import random
import socket
import struct
import sys
import time


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    src, dst, count, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    payload = b"\xa5" * 1000
    rng = random.Random(14)
    sent = 0
    deadline = time.time() + secs
    while sent < count and time.time() < deadline:
        ident = rng.randrange(1, 65536)
        flags_offset = 0x2000 | (1480 // 8)
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags_offset, 64, 17, 0,
            socket.inet_aton(src), socket.inet_aton(dst),
        )
        try:
            s.sendto(hdr + payload, (dst, 0))
            sent += 1
        except (BlockingIOError, OSError):
            time.sleep(0.0005)
    print(sent)


if __name__ == "__main__":
    main()
