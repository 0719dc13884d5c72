"""One Python Yjs client for tests/interop/doc.sh.

    python py_agent.py --lib wire|pycrdt --url ws://127.0.0.1:PORT/doc --room ROOM --name NAME
        [--edit] [--expect js,wire,py,rust] [--timeout 20] [--linger 0.5]

--lib wire:   wire-websocket 0.7.1 AsyncWebSocketClient (pycrdt 0.12), venv .venv-doc-wire
--lib pycrdt: pycrdt-websocket 0.16.x: pycrdt.Provider over httpx-ws + HttpxWebsocket
              (pycrdt 0.14), venv .venv-doc-pycrdt

Same behaviour as yjs_agent.mjs: connect to URL/ROOM, wait for the first sync, optionally
make this client's edits in one transaction (t += "[NAME]", m.NAME = "NAME",
m["n_NAME"] = number, a.append("NAME")), wait (bounded) for every --expect client's
contributions, linger, print the document as canonical JSON on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from urllib.parse import quote, urlsplit

import anyio
from pycrdt import Array, Doc, Map, Text

T0 = time.monotonic()


def log(*msg: object) -> None:
    print(f"[{ARGS.lib} {ARGS.name} +{int((time.monotonic() - T0) * 1000)}ms]", *msg,
          file=sys.stderr, flush=True)


def number_for(name: str) -> int:
    return sum(map(ord, name))


def plain(v):
    """JSON-ready copy; whole floats become ints (pycrdt reads every number as float)."""
    if isinstance(v, dict):
        return {k: plain(v[k]) for k in sorted(v)}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def roots(doc: Doc):
    return doc.get("t", type=Text), doc.get("m", type=Map), doc.get("a", type=Array)


def canon(doc: Doc) -> dict:
    t, m, a = roots(doc)
    return plain({"a": a.to_py() or [], "m": m.to_py() or {}, "t": str(t)})


def missing(doc: Doc, expect: list[str]) -> list[str]:
    c = canon(doc)
    out = []
    for e in expect:
        if f"[{e}]" not in c["t"]:
            out.append(f"t lacks [{e}]")
        if c["m"].get(e) != e:
            out.append(f'm.{e} != "{e}"')
        if c["m"].get(f"n_{e}") != number_for(e):
            out.append(f"m.n_{e} != {number_for(e)}")
        if e not in c["a"]:
            out.append(f'a lacks "{e}"')
    return out


def edit(doc: Doc, name: str) -> None:
    t, m, a = roots(doc)
    with doc.transaction():
        t.insert(len(t), f"[{name}]")
        m[name] = name
        m[f"n_{name}"] = number_for(name)
        a.append(name)


async def converge_and_print(doc: Doc) -> None:
    if ARGS.edit:
        edit(doc, ARGS.name)
        log("edited")
    while missing(doc, ARGS.expect):
        await anyio.sleep(0.02)
    if ARGS.expect:
        log("has every expected contribution")
    await anyio.sleep(ARGS.linger)


async def run_wire(doc_out: list) -> None:
    from wire_websocket import AsyncWebSocketClient

    u = urlsplit(ARGS.url)
    path = (u.path.strip("/") + "/" + ARGS.room).lstrip("/")
    if ARGS.token:
        # wire-websocket puts the id after the host: the query rides along (?token=)
        path += "?token=" + quote(ARGS.token, safe="")
    # wire-websocket builds f"{host}:{port}/{id}" and wants an http:// host
    async with AsyncWebSocketClient(id=path, host=f"http://{u.hostname}", port=u.port) as client:
        await client.synchronized.wait()
        doc_out.append(client.doc)
        log("synced", json.dumps(canon(client.doc)))
        await converge_and_print(client.doc)


async def run_pycrdt(doc_out: list) -> None:
    from httpx_ws import aconnect_ws
    from pycrdt import Provider
    from pycrdt.websocket.websocket import HttpxWebsocket

    u = urlsplit(ARGS.url)
    path = (u.path.rstrip("/") + "/" + ARGS.room)
    # pycrdt 0.14 draws 53-bit client IDs; pycrdt 0.12 (wire-websocket 0.7.1) does not decode
    # them correctly, so an edit it makes after such an item points at an origin that does not
    # exist and stays pending everywhere (see tests/interop/README.md). Yjs (JS) draws 32-bit IDs;
    # so do we here, so that the four clients can share one document.
    # DOC_AGENT_NATIVE_IDS=1 keeps pycrdt's own (53-bit) IDs, to reproduce the problem.
    native = os.environ.get("DOC_AGENT_NATIVE_IDS") == "1"
    doc = Doc() if native else Doc(client_id=random.randrange(1, 2**32))
    doc_out.append(doc)
    async with aconnect_ws(f"http://{u.hostname}:{u.port}{path}",
                           keepalive_ping_interval_seconds=None) as ws:
        async with Provider(doc, HttpxWebsocket(ws, path.lstrip("/"))) as provider:
            await provider.synced.wait()
            log("synced", json.dumps(canon(doc)))
            await converge_and_print(doc)


async def main() -> int:
    doc_out: list = []
    runner = run_wire if ARGS.lib == "wire" else run_pycrdt
    try:
        with anyio.fail_after(ARGS.timeout):
            await runner(doc_out)
    except TimeoutError:
        state = canon(doc_out[0]) if doc_out else None
        why = "; ".join(missing(doc_out[0], ARGS.expect)) if doc_out else "never synced"
        print(f"[{ARGS.lib}] FAIL: timed out after {ARGS.timeout}s; missing: {why or '-'}; "
              f"doc: {json.dumps(state)}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(canon(doc_out[0]), separators=(",", ":"), ensure_ascii=False), flush=True)
    return 0


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--lib", choices=["wire", "pycrdt"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--token", default="", help="?token= for the server (wire only)")
    p.add_argument("--room", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--edit", action="store_true")
    p.add_argument("--expect", default="")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--linger", type=float, default=0.5)
    a = p.parse_args()
    a.expect = [e for e in a.expect.split(",") if e]
    return a


if __name__ == "__main__":
    ARGS = parse()
    sys.exit(anyio.run(main))
