#!/usr/bin/env python3
"""Cloud traffic for tests/interop/webhooks.sh, against a real `nimbus serve --webhook`.

  script URL MANIFEST ROOM... : per room, a scratchattach client (user u<ROOM>) creates
      ☁ x, sets it 1..--sets, renames it to ☁ y and deletes it; the expected cloud events
      are appended to MANIFEST as JSON lines {"room","type","name","value","user"}.
  sets URL ROOM N : one scratchattach client sets ☁ k to 1..N, --interval apart (it
      reconnects by itself when the server goes away); prints how many sets it sent.
  flood URL ROOM SECONDS : a raw client (websocket-client, scratchattach's transport) sets
      ☁ f as fast as --rate allows while a second one counts what it receives; prints
      {"sent","received","last"} as JSON.
"""
import argparse
import json
import sys
import threading
import time

import scratchattach as sa
import websocket


def local_cloud(url, room, user):
    class LocalCloud(sa.TwCloud):
        def __init__(self, *, project_id, **_):
            super().__init__(project_id=project_id, cloud_host=url,
                             purpose="nimbus webhooks interop", contact="ci")
    c = LocalCloud(project_id=int(room))
    c.username = user
    c.connect()
    return c


def script(args):
    out = open(args.manifest, "a", encoding="utf-8")
    clients = {r: local_cloud(args.url, r, f"u{r}") for r in args.rooms}
    time.sleep(0.3)

    def record(room, typ, name, value):
        out.write(json.dumps({"room": room, "type": typ, "name": name, "value": value,
                              "user": f"u{room}"}) + "\n")

    for i in range(1, args.sets + 1):
        for r, c in clients.items():
            c.set_var("x", i)
            record(r, "CLOUD_CREATE" if i == 1 else "CLOUD_SET", "☁ x", i)
        time.sleep(0.02)
    for r, c in clients.items():
        pid = int(r)
        c._send_packet({"method": "rename", "name": "☁ x", "new_name": "☁ y",
                        "user": f"u{r}", "project_id": pid})
        record(r, "CLOUD_RENAME", "☁ x", args.sets)
    time.sleep(0.2)
    for r, c in clients.items():
        c._send_packet({"method": "delete", "name": "☁ y", "user": f"u{r}", "project_id": int(r)})
        record(r, "CLOUD_DELETE", "☁ y", args.sets)
    time.sleep(0.3)
    for c in clients.values():
        c.disconnect()
    out.close()


def sets(args):
    c = local_cloud(args.url, args.room, f"u{args.room}")
    sent = 0
    for i in range(1, args.n + 1):
        try:
            c.set_var("k", i)
            sent += 1
        except Exception as e:  # noqa: BLE001 (the server is being restarted)
            print(f"set {i} failed: {e!r}", file=sys.stderr)
            time.sleep(0.5)
        time.sleep(args.interval)
    print(json.dumps({"sent": sent}))


def flood(args):
    url = args.url
    def ws(user):
        w = websocket.create_connection(url, timeout=10)
        w.send(json.dumps({"method": "handshake", "user": user, "project_id": args.room}) + "\n")
        return w
    got = {"received": 0, "last": None}
    stop = threading.Event()
    rx = ws("watcher")
    def read():
        rx.settimeout(1)
        while not stop.is_set():
            try:
                for line in rx.recv().splitlines():
                    if line.strip():
                        got["received"] += 1
                        got["last"] = json.loads(line)["value"]
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # noqa: BLE001
                return
    t = threading.Thread(target=read, daemon=True)
    t.start()
    tx = ws("flooder")
    time.sleep(0.3)
    sent, end, step = 0, time.time() + args.seconds, 1.0 / args.rate
    nxt = time.time()
    while time.time() < end:
        sent += 1
        tx.send(json.dumps({"method": "set", "name": "☁ f", "value": sent}) + "\n")
        nxt += step
        time.sleep(max(0.0, nxt - time.time()))
    time.sleep(1.0)
    stop.set()
    print(json.dumps({"sent": sent, **got}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("script")
    s.add_argument("url"); s.add_argument("manifest"); s.add_argument("rooms", nargs="+")
    s.add_argument("--sets", type=int, default=10)
    s = sub.add_parser("sets")
    s.add_argument("url"); s.add_argument("room"); s.add_argument("n", type=int)
    s.add_argument("--interval", type=float, default=0.05)
    s = sub.add_parser("flood")
    s.add_argument("url"); s.add_argument("room"); s.add_argument("seconds", type=float)
    s.add_argument("--rate", type=float, default=800)
    args = ap.parse_args()
    {"script": script, "sets": sets, "flood": flood}[args.cmd](args)


if __name__ == "__main__":
    main()
