#!/usr/bin/env python3
"""A small upstream DNS server for the lab (the role CoreDNS's `forward` plays):
UDP on --port, answers A for names under --zone with --address, NXDOMAIN for
the rest. Exits after --seconds (bounded). Uses dnspython's wire code.
Writes its pid file once the socket listens."""
import argparse
import os
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=5300)
ap.add_argument("--zone", default="example.org")
ap.add_argument("--address", default="198.18.222.1")
ap.add_argument("--seconds", type=float, default=120)
ap.add_argument("--pid-file")
a = ap.parse_args()

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", a.port))
s.settimeout(0.5)
if a.pid_file:
    with open(a.pid_file, "w") as f:
        f.write(str(os.getpid()))
zone = a.zone.rstrip(".").lower()
end = time.monotonic() + a.seconds
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(4096)
    except socket.timeout:
        continue
    try:
        q = dns.message.from_wire(data)
    except Exception:
        continue
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    name = q.question[0].name.to_text().rstrip(".").lower() if q.question else ""
    if name == zone or name.endswith("." + zone):
        if q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", a.address))
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
    s.sendto(r.to_wire(), peer)
