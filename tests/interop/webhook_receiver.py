#!/usr/bin/env python3
"""A Standard Webhooks receiver for tests/interop/webhooks.sh (stdlib http.server).

Every request is verified with the `standardwebhooks` package from PyPI
(`standardwebhooks.webhooks.Webhook.verify`); a request that fails verification gets 401.
The first --fail-first verified requests get 500 (to exercise retries); with --hang no
request is ever answered (a dead receiver). Accepted events
are de-duplicated by event id and appended to --out as JSON lines
({"id","room","type","data","webhook_id"}). On exit a summary is written to --summary:
{"requests","verified","bad_signatures","failed_on_purpose","accepted","events",
 "duplicates","webhook_ids_of_failures","webhook_ids_of_accepted"}.

Exits after --timeout seconds, or as soon as --expect unique events were recorded.
Listens on 127.0.0.1 only; --port 0 picks a free port, written to --port-file.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret", required=True, help="whsec_... to verify with")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--expect", type=int, default=0)
    ap.add_argument("--hang", action="store_true", help="never answer")
    args = ap.parse_args()

    wh = Webhook(args.secret)
    lock = threading.Lock()
    done = threading.Event()
    seen = set()
    out = open(args.out, "w", encoding="utf-8")
    stats = {
        "requests": 0,
        "verified": 0,
        "bad_signatures": 0,
        "failed_on_purpose": 0,
        "accepted": 0,
        "events": 0,
        "duplicates": 0,
        "webhook_ids_of_failures": [],
        "webhook_ids_of_accepted": [],
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # quiet
            pass

        def reply(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            if args.hang:
                with lock:
                    stats["requests"] += 1
                threading.Event().wait()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k: v for k, v in self.headers.items()}
            with lock:
                stats["requests"] += 1
                try:
                    payload = wh.verify(body, headers)
                except WebhookVerificationError as e:
                    stats["bad_signatures"] += 1
                    print(f"receiver: verification failed: {e}", file=sys.stderr)
                    self.reply(401)
                    return
                stats["verified"] += 1
                msg_id = headers.get("webhook-id") or headers.get("Webhook-Id")
                if stats["failed_on_purpose"] < args.fail_first:
                    stats["failed_on_purpose"] += 1
                    stats["webhook_ids_of_failures"].append(msg_id)
                    self.reply(500)
                    return
                stats["accepted"] += 1
                stats["webhook_ids_of_accepted"].append(msg_id)
                for ev in payload["data"]["events"]:
                    if ev["id"] in seen:
                        stats["duplicates"] += 1
                        continue
                    seen.add(ev["id"])
                    stats["events"] += 1
                    rec = {
                        "id": ev["id"],
                        "room": ev["room"],
                        "type": ev["type"],
                        "data": ev["data"],
                        "webhook_id": msg_id,
                    }
                    out.write(json.dumps(rec) + "\n")
                out.flush()
                finished = bool(args.expect and stats["events"] >= args.expect)
            self.reply(204)
            if finished:
                done.set()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"receiver: listening on 127.0.0.1:{port}", file=sys.stderr)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    done.wait(args.timeout)
    server.shutdown()
    server.server_close()
    out.close()
    with lock:
        with open(args.summary, "w") as f:
            json.dump(stats, f)
    print(f"receiver: {json.dumps({k: v for k, v in stats.items() if not k.startswith('webhook_ids')})}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
