#!/usr/bin/env python3
"""Traffic for scripts/demo, run inside a pod namespace: for --seconds, loops
TCP connections (connect, one line, close) to --tcp ADDR:PORT and UDP
request/response to --udp ADDR:PORT, measuring each exchange's round trip.
Prints one JSON line: counts, failures, backends seen, latency percentiles (µs).
Bounded in time (--seconds) and per exchange (1 s timeouts)."""
import argparse
import json
import socket
import time


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 1)


ap = argparse.ArgumentParser()
ap.add_argument("--tcp")
ap.add_argument("--udp")
ap.add_argument("--seconds", type=float, default=20)
ap.add_argument("--label", default="")
a = ap.parse_args()


def addr(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


tcp_rtt, udp_rtt, backends = [], [], {}
tcp_fail = udp_fail = 0
udp = None
if a.udp:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1.0)
    udp.connect(addr(a.udp))
end = time.monotonic() + a.seconds
i = 0
while time.monotonic() < end:
    i += 1
    if a.tcp:
        t0 = time.perf_counter()
        try:
            with socket.create_connection(addr(a.tcp), timeout=1.0) as s:
                s.sendall(b"demo %d\n" % i)
                data = s.makefile().readline()
            tcp_rtt.append((time.perf_counter() - t0) * 1e6)
            b = data.split(" ")[0]
            backends[b] = backends.get(b, 0) + 1
        except OSError:
            tcp_fail += 1
    if udp is not None:
        for _ in range(10):
            t0 = time.perf_counter()
            try:
                udp.send(b"demo %d" % i)
                udp.recv(2048)
                udp_rtt.append((time.perf_counter() - t0) * 1e6)
            except OSError:
                udp_fail += 1
print(json.dumps({
    "label": a.label,
    "tcp_connections": len(tcp_rtt), "tcp_failed": tcp_fail,
    "tcp_p50_us": pct(tcp_rtt, 50), "tcp_p99_us": pct(tcp_rtt, 99),
    "udp_exchanges": len(udp_rtt), "udp_failed": udp_fail,
    "udp_p50_us": pct(udp_rtt, 50), "udp_p99_us": pct(udp_rtt, 99), "udp_p999_us": pct(udp_rtt, 99.9),
    "backends": backends,
}))
