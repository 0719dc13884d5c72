#!/usr/bin/env python3
"""Disk full on a real 2 MB tmpfs, against the release binary (manual measurement, needs root
for `mount`; the in-process equivalent that CI runs is crates/server/tests/store_failures.rs).

    cargo build --release -p nimbus
    sudo python3 tests/store/disk_full.py target/release/nimbus

Scenario 1: sets of 20 KB values until the disk is full; what the writer, an observer,
/readyz and /metrics see; space returns (remount bigger); SIGTERM; restart and compare every
acknowledged value with what was stored. Scenario 2: SIGTERM while the disk is still full.
Only the standard library: a minimal WebSocket client (text frames, masked)."""

import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


class Ws:
    def __init__(self, port, path="/"):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "User-Agent: disk_full.py\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.s.sendall(hdr + mask + body)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=10):
        """('text', str) or ('close', code, reason); pings are answered."""
        self.s.settimeout(timeout)
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            op = b0 & 0x0F
            if op == 1:
                return ("text", payload.decode())
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return ("close", code, payload[2:].decode(errors="replace"))
            if op == 9:
                mask = os.urandom(4)
                self.s.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + mask
                               + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def store_metrics(port):
    _, body = http(port, "/metrics")
    return {m.group(1): m.group(2) for m in re.finditer(r"^(nimbus_store_\S+) (\S+)$", body, re.M)}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(binary, data, port, log):
    p = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def join(port, user, room="1"):
    ws = Ws(port)
    ws.send(json.dumps({"method": "handshake", "user": user, "project_id": room}))
    return ws


def fill(port):
    """Sets until the writer is closed; returns (acknowledged {name: value}, close, count)."""
    writer, observer = join(port, "writer"), join(port, "observer")
    time.sleep(0.2)
    acked, i = {}, 0
    while True:
        i += 1
        name = f"☁ v{i % 100}"
        value = str(i) + "0" * 20000
        writer.send(json.dumps({"method": "set", "name": name, "value": value}))
        try:
            got = observer.recv(timeout=2)
        except socket.timeout:
            got = None
        if got and got[0] == "text" and value in got[1]:
            acked[name] = value
            continue
        # Not seen by the observer: the writer must have been refused.
        return acked, writer.recv(), i


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/nimbus")
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], check=True)
        try:
            scenario_recovery(binary, mnt)
        finally:
            subprocess.run(["umount", mnt])
    with tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], check=True)
        try:
            scenario_shutdown_while_full(binary, mnt)
        finally:
            subprocess.run(["umount", mnt])


def scenario_recovery(binary, mnt):
    port, data, log = free_port(), os.path.join(mnt, "data"), "/tmp/disk_full_1.log"
    server = start(binary, data, port, log)
    t0 = time.monotonic()
    acked, close, sets = fill(port)
    print(f"[1] disk full after {sets} sets ({time.monotonic() - t0:.2f} s): writer got {close}")
    print(f"[1] acknowledged variables: {len(acked)}; RSS {rss_kb(server.pid)} kB")
    print(f"[1] /readyz -> {http(port, '/readyz')}")
    print(f"[1] /healthz -> {http(port, '/healthz')}")
    print(f"[1] metrics: {store_metrics(port)}")
    late = join(port, "late")
    first = late.recv()
    print(f"[1] a joiner while full gets the room ({len(first[1])} bytes); a set from it:")
    late.send(json.dumps({"method": "set", "name": "☁ v1", "value": "1"}))
    print(f"[1]   -> {late.recv()}")
    subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
    t1 = time.monotonic()
    while http(port, "/readyz")[0] != 200:
        time.sleep(0.05)
    print(f"[1] space returned: ready again after {time.monotonic() - t1:.2f} s; metrics: {store_metrics(port)}")
    server.terminate()
    code = server.wait(timeout=30)
    text = open(log).read()
    print(f"[1] SIGTERM -> exit {code}; 'shut down cleanly' logged: {'shut down cleanly' in text}")
    server = start(binary, data, port, log + ".2")
    ws = join(port, "check")
    stored = {}
    while len(stored) < len(acked):
        kind, *rest = ws.recv()
        for line in rest[0].splitlines():
            m = json.loads(line)
            stored[m["name"]] = str(m["value"])
    lost = [n for n, v in acked.items() if stored.get(n) != v]
    print(f"[1] after restart: {len(acked)} acknowledged values, {len(lost)} lost or stale")
    server.terminate()
    server.wait(timeout=30)


def scenario_shutdown_while_full(binary, mnt):
    port, data, log = free_port(), os.path.join(mnt, "data"), "/tmp/disk_full_2.log"
    server = start(binary, data, port, log)
    acked, close, sets = fill(port)
    print(f"[2] disk full after {sets} sets: writer got {close}; metrics: {store_metrics(port)}")
    server.terminate()
    code = server.wait(timeout=30)
    lines = [l for l in open(log).read().splitlines() if "shut" in l]
    print(f"[2] SIGTERM while full -> exit {code}")
    for l in lines:
        print(f"[2]   {l[-160:]}")


if __name__ == "__main__":
    main()
