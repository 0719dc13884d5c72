#!/usr/bin/env python3
"""Hostile clients against a release `nimbus serve`, with the server's RSS before, during
and after each attack (docs/security.md). Python standard library only; loopback only;
every attack is bounded in count and time.

    cargo build --release -p nimbus
    python3 bench/hostile.py [--bin target/release/nimbus] [--only ping,nonreaders,conns,conns_open,slowloris]
"""
import argparse
import os
import resource
import socket
import struct
import subprocess
import tempfile
import time

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "User-Agent: nimbus-hostile-bench\r\n\r\n"
)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    def __init__(self, binary, extra):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.dir.name]
            + extra,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NIMBUS_LOG": "warn"},
        )
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port)).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def metric(self, name):
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        total = 0.0
        for line in data.decode(errors="replace").splitlines():
            if line.startswith(name) and not line.startswith("#"):
                try:
                    total += float(line.split()[-1])
                except ValueError:
                    pass
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


def upgrade(port, path="/", rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(UPGRADE.format(path=path).encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise RuntimeError("EOF during upgrade: %r" % head)
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace").splitlines()[0])
    return s


def frame(opcode, payload):
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", n)
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(s, timeout=15):
    """Read until EOF; the close code of the last close frame seen, or None."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    code, i = None, 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        at = i + 2
        if n == 126:
            n = struct.unpack(">H", data[at:at + 2])[0]
            at += 2
        elif n == 127:
            n = struct.unpack(">Q", data[at:at + 8])[0]
            at += 8
        if at + n > len(data):
            break
        if op == 8 and n >= 2:
            code = struct.unpack(">H", data[at:at + 2])[0]
        i = at + n
    return code


def row(name, bound, code, before, during, after, note=""):
    print(f"| {name} | {bound} | {code} | {before:.1f} | {during:.1f} | {after:.1f} | {note} |", flush=True)


def attack_ping(binary):
    node = Node(binary, [])
    try:
        before = node.rss_mib()
        s = upgrade(node.port, "/")
        s.sendall(frame(1, b'{"method":"handshake","user":"p","project_id":"1"}'))
        ping = frame(9, b"x" * 125)
        burst = ping * 1000
        end = time.time() + 4
        sent = 0
        peak = before
        while time.time() < end:
            try:
                s.sendall(burst)
                sent += 1000
            except OSError:
                break
            peak = max(peak, node.rss_mib())
        code = close_code(s)
        time.sleep(1)
        row("ping flood (4 s, cloud, never reading)", "16 pings burst, 1/s", code, before, peak,
            node.rss_mib(), f"{sent} pings sent in 4 s (the server drains them after its close)")
    finally:
        node.stop()


def set_line(i, rnd, n=99_990):
    d = str(1 + (i + rnd) % 9)
    return '{"method":"set","name":"\u2601 v%d","value":"%s"}' % (i, d * n)


def attack_nonreaders(binary, count=127):
    node = Node(binary, [])
    try:
        w = upgrade(node.port, "/")
        w.sendall(frame(1, b'{"method":"handshake","user":"writer","project_id":"big"}'))
        for i in range(128):
            w.sendall(frame(1, set_line(i, 0).encode()))
        # Let the room apply them.
        deadline = time.time() + 30
        while node.metric("nimbus_cloud_messages_total") < 129 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        before = node.rss_mib()
        t0 = time.time()
        held, peak = [], before
        for n in range(count):
            s = upgrade(node.port, "/", rcvbuf=4096)
            s.sendall(frame(1, ('{"method":"handshake","user":"idle%d","project_id":"big"}' % n).encode()))
            held.append(s)
            peak = max(peak, node.rss_mib())
        for rnd in range(1, 3):
            for i in range(128):
                w.sendall(frame(1, set_line(i, rnd).encode()))
            peak = max(peak, node.rss_mib())
        deadline = time.time() + 60
        while node.metric("nimbus_cloud_slow_consumers_total") < count and time.time() < deadline:
            peak = max(peak, node.rss_mib())
            time.sleep(0.1)
        cut = node.metric("nimbus_cloud_slow_consumers_total")
        took = time.time() - t0
        for s in held:
            s.close()
        time.sleep(1)
        row(f"{count} non-readers, room of 128 x 100 KB", "1 MiB live queue, 10 s write timeout",
            1008, before, peak, node.rss_mib(),
            f"{int(cut)} cut within {took:.1f} s of the first join; +{(peak - before) * 1024 / count:.0f} KiB each at peak")
        w.close()
    finally:
        node.stop()


def attack_conns(binary, count=5000, rate_too=True):
    extra = ["--limit-loopback", "true"]
    if not rate_too:
        extra += ["--new-conns-per-ip-per-sec", "100000", "--new-conns-per-ip-burst", "100000"]
    node = Node(binary, extra)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        before = node.rss_mib()
        held, ok, refused, failed = [], 0, 0, 0
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", node.port))
                s.sendall(UPGRADE.format(path="/").encode())
                s.settimeout(5)
                line = s.recv(64)
                if line.startswith(b"HTTP/1.1 101"):
                    ok += 1
                    held.append(s)
                elif line.startswith(b"HTTP/1.1 429"):
                    refused += 1
                    s.close()
                else:
                    failed += 1
                    s.close()
            except OSError:
                failed += 1
        during = node.rss_mib()
        for s in held:
            s.close()
        time.sleep(2)
        bound = "512 open, 50 new/s (burst 200)" if rate_too else "512 open (rate cap lifted)"
        row(f"{count} connections from one address", bound, "429",
            before, during, node.rss_mib(), f"{ok} upgraded, {refused} refused with 429, {failed} failed")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        node.stop()


def attack_slowloris(binary, count=400):
    node = Node(binary, [])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        before = node.rss_mib()
        socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", node.port))
            s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
            s.setblocking(False)
            socks.append(s)
        t0, peak, open_ = time.time(), before, count
        while time.time() - t0 < 15 and open_ > 0:
            open_ = 0
            for s in socks:
                try:
                    s.send(b"a")
                    try:
                        if s.recv(1) == b"":
                            continue
                    except BlockingIOError:
                        pass
                    open_ += 1
                except OSError:
                    pass
            peak = max(peak, node.rss_mib())
            time.sleep(1)
        took = time.time() - t0
        for s in socks:
            s.close()
        time.sleep(1)
        row(f"slowloris, {count} sockets at 1 byte/s", "10 s to a complete request head", "TCP close",
            before, peak, node.rss_mib(), f"{count - open_} of {count} closed after {took:.0f} s")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        node.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--only", default="ping,nonreaders,conns,conns_open,slowloris")
    a = ap.parse_args()
    print("| attack | bound | close | RSS before MiB | during (peak) | after | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    attacks = {
        "ping": attack_ping,
        "nonreaders": attack_nonreaders,
        "conns": attack_conns,
        "conns_open": lambda b: attack_conns(b, rate_too=False),
        "slowloris": attack_slowloris,
    }
    for name in a.only.split(","):
        attacks[name](a.bin)


if __name__ == "__main__":
    main()
