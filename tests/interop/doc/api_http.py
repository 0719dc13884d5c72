"""One HTTP request to nimbus's HTTP API (stdlib only), for tests/interop/doc.sh.

    python3 api_http.py METHOD URL [--token T] [--body FILE | --body-hex HEX] [--out FILE]

Prints the status code on stdout; the response body goes to --out (binary) or stderr.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("--token", default="")
    p.add_argument("--body", default="")
    p.add_argument("--body-hex", default="")
    p.add_argument("--out", default="")
    a = p.parse_args()
    data = None
    if a.body:
        with open(a.body, "rb") as f:
            data = f.read()
    elif a.body_hex:
        data = bytes.fromhex(a.body_hex)
    req = urllib.request.Request(a.url, data=data, method=a.method)
    if a.token:
        req.add_header("Authorization", f"Bearer {a.token}")
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    if a.out:
        with open(a.out, "wb") as f:
            f.write(body)
    elif body:
        sys.stderr.write(body.decode("utf-8", "replace"))
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
