#!/usr/bin/env python3
"""The server every lab pod runs (started by scripts/testbed up).

TCP 8080:
  - an HTTP request (GET/HEAD/POST/...) gets "HTTP/1.0 200 OK" with the body
    "<pod> <client-ip>:<client-port>\\n" and the connection is closed;
  - anything else is line based: each line L gets "<pod> <client-ip>:<client-port> L\\n"
    back on the same connection (so a test can keep one connection open and see
    that it stays on the same backend). Idle connections close after 30 s.
UDP 5353: each datagram D gets "<pod> <client-ip>:<client-port> " + D back.

The client address is what the pod saw, so tests can tell whether the source was
NATed. The pid file is written once both sockets listen.
"""
import argparse
import os
import signal
import socket
import socketserver
import sys
import threading

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
IDLE_SECS = 30
MAX_REQUEST = 64 * 1024


def ident(name, addr):
    return "%s %s:%d" % (name, addr[0], addr[1])


class TcpHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(IDLE_SECS)
        me = ident(self.server.pod_name, self.client_address)
        buf = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                buf += chunk
                if buf.startswith(HTTP_METHODS):
                    if b"\r\n\r\n" in buf or b"\n\n" in buf or len(buf) > MAX_REQUEST:
                        body = (me + "\n").encode()
                        head = (
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                            "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                        ).encode()
                        sock.sendall(head + (b"" if buf.startswith(b"HEAD ") else body))
                        return
                    continue
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    sock.sendall(me.encode() + b" " + line.rstrip(b"\r") + b"\n")
                if len(buf) > MAX_REQUEST:
                    return
        except (socket.timeout, ConnectionError, OSError):
            return


class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve_udp(sock, name):
    while True:
        try:
            data, addr = sock.recvfrom(65535)
            sock.sendto(ident(name, addr).encode() + b" " + data, addr)
        except OSError:
            continue


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="pod name reported in every answer")
    ap.add_argument("--tcp-port", type=int, default=8080)
    ap.add_argument("--udp-port", type=int, default=5353)
    ap.add_argument("--pidfile")
    args = ap.parse_args()

    tcp = TcpServer(("0.0.0.0", args.tcp_port), TcpHandler)
    tcp.pod_name = args.name
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("0.0.0.0", args.udp_port))
    threading.Thread(target=serve_udp, args=(udp, args.name), daemon=True).start()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.pidfile:
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(tmp, args.pidfile)
    try:
        tcp.serve_forever()
    finally:
        tcp.server_close()


if __name__ == "__main__":
    main()
