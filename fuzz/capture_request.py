#!/usr/bin/env python3
"""Capture the exact upgrade request bytes real WebSocket clients send.

Usage: capture_request.py PORT OUT

Listens on 127.0.0.1:PORT, reads one request head (up to the blank line), writes it to OUT and
closes the connection without answering. Used to record the real clients' requests seeded in
fuzz/corpus/upgrade (there prefixed with the two bytes 00 00, the fuzz input's "default limit"):
run it, point a client at ws://127.0.0.1:PORT/notifications?token=..., and OUT holds that
client's exact bytes. fuzz/README.md lists the clients and commands used.
"""
import socket
import sys

port, out = int(sys.argv[1]), sys.argv[2]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
srv.settimeout(60)
conn, _ = srv.accept()
conn.settimeout(10)
data = b""
while b"\r\n\r\n" not in data:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
with open(out, "wb") as f:
    f.write(data)
conn.close()
srv.close()
