#!/usr/bin/env python3
"""Hostile IPC clients for measuring a running server (docs/security.md, section "IPC").

Not a test: it prints figures. Standard library only; loopback only.

  attack.py ping-flood PORT PID [SECONDS]   masked 125-byte pings, never read; RSS of PID
                                             before / at the end of the flood / 2 s after close
  attack.py strangers PORT PID N SECRET      N idle upgraded sockets, then one request with
                                             SECRET: is it answered? RSS before / after
"""
import os
import socket
import sys
import time

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def upgrade(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        buf += chunk
    if not buf.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(buf.split(b"\r\n")[0].decode())
    return s, buf.split(b"\r\n\r\n", 1)[1]


def frame(opcode, payload):
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frames(s, rest, limit_s=5.0):
    """Read server frames until EOF or silence: (pongs, close code or None)."""
    s.settimeout(limit_s)
    buf, pongs, code = rest, 0, None
    while True:
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            head = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, head = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, head = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < head + n:
                break
            op, payload = buf[0] & 0x0F, buf[head : head + n]
            buf = buf[head + n :]
            if op == 0xA:
                pongs += 1
            elif op == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                return pongs, code
        try:
            chunk = s.recv(1 << 16)
        except (socket.timeout, ConnectionError):
            return pongs, code
        if not chunk:
            return pongs, code
        buf += chunk


def ping_flood(port, pid, seconds=3.0):
    before = rss_kib(pid)
    s, rest = upgrade(port)
    batch = frame(0x9, b"p" * 125) * 1000
    sent, t0, err = 0, time.time(), None
    s.settimeout(1.0)
    while time.time() - t0 < seconds:
        try:
            s.sendall(batch)
            sent += 1000
        except socket.timeout:
            continue
        except OSError as e:
            err = e.__class__.__name__
            break
    flood_s = time.time() - t0
    during = rss_kib(pid)
    pongs, code = read_frames(s, rest)
    s.close()
    time.sleep(2)
    after = rss_kib(pid)
    print(
        f"ping-flood: pings sent {sent} in {flood_s:.1f} s (write ended by {err}); "
        f"pongs read back {pongs}; close code {code}; "
        f"RSS KiB before {before} / end of flood {during} / 2 s after close {after}"
    )


def strangers(port, pid, n, secret):
    before = rss_kib(pid)
    socks, refused = [], 0
    for _ in range(n):
        try:
            socks.append(upgrade(port))
        except (OSError, ConnectionError):
            refused += 1
    during = rss_kib(pid)
    req = (
        '{"endpoint":"echo","data":{"ok":1},"headers":{"Authorization":"%s"}}' % secret
    ).encode()
    try:
        c, rest = upgrade(port)
        c.sendall(frame(0x1, req))
        c.settimeout(5.0)
        data = rest
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        answer = data[2 : 2 + (data[1] & 0x7F)].decode() if len(data) >= 2 else "EOF"
        c.close()
    except (OSError, ConnectionError) as e:
        answer = f"refused ({e.__class__.__name__}: {e})"
    closed = 0
    for s, rest in socks:
        _, code = read_frames(s, rest, limit_s=0.2)
        closed += code is not None
        s.close()
    print(
        f"strangers: {n} opened ({refused} refused at connect); client with the secret got: "
        f"{answer}; strangers closed with a close frame: {closed}; "
        f"RSS KiB before {before} / with {n - refused} strangers {during}"
    )


if __name__ == "__main__":
    cmd, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if cmd == "ping-flood":
        ping_flood(port, pid, float(sys.argv[4]) if len(sys.argv) > 4 else 3.0)
    elif cmd == "strangers":
        strangers(port, pid, int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)
