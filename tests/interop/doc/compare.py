"""Compare the documents printed by the interop clients (stdlib only).

    python3 compare.py [--expect js,wire,py,rust] [--ref FILE] NAME=FILE...

Each FILE holds a client's stdout; its last non-empty line is the document as JSON
(root name -> string for text t, object for map m, array for array a). Whole floats are
read as ints (pycrdt reads every number as a float). Every document must equal the first
one (or --ref), and hold each --expect client's own contribution: "[X]" in t, m.X == "X",
m.n_X == number_for(X), "X" in a. Prints one line per client; exit 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys


def number_for(name: str) -> int:
    return sum(map(ord, name))


def plain(v):
    if isinstance(v, dict):
        return {k: plain(v[k]) for k in sorted(v)}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def load(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except OSError as e:
        return None, f"cannot read {path}: {e}"
    if not lines:
        return None, "printed nothing"
    try:
        doc = json.loads(lines[-1])
    except ValueError as e:
        return None, f"last line is not JSON ({e}): {lines[-1][:200]!r}"
    if not isinstance(doc, dict):
        return None, f"not a JSON object: {lines[-1][:200]!r}"
    # Roots a client never touched may be absent from its dump; they read as empty.
    doc = plain(doc)
    doc.setdefault("t", "")
    doc.setdefault("m", {})
    doc.setdefault("a", [])
    return doc, None


def contributions(doc: dict, expect: list[str]) -> list[str]:
    out = []
    t, m, a = doc.get("t"), doc.get("m"), doc.get("a")
    for e in expect:
        if not isinstance(t, str) or f"[{e}]" not in t:
            out.append(f"t lacks [{e}]")
        if not isinstance(m, dict) or m.get(e) != e:
            out.append(f'm.{e} != "{e}"')
        if not isinstance(m, dict) or m.get(f"n_{e}") != number_for(e):
            out.append(f"m.n_{e} != {number_for(e)}")
        if not isinstance(a, list) or e not in a:
            out.append(f'a lacks "{e}"')
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--expect", default="")
    p.add_argument("--ref", help="file holding the reference document (default: the first)")
    p.add_argument("--save", help="write the agreed document here as canonical JSON")
    p.add_argument("docs", nargs="+", metavar="NAME=FILE")
    a = p.parse_args()
    expect = [e for e in a.expect.split(",") if e]
    ok = True
    ref = None
    if a.ref:
        ref, err = load(a.ref)
        if err:
            print(f"  reference: {err}")
            return 1
    for item in a.docs:
        name, _, path = item.partition("=")
        doc, err = load(path)
        if err:
            print(f"  {name:<14} FAIL {err}")
            ok = False
            continue
        if ref is None:
            ref = doc
        problems = contributions(doc, expect)
        if doc != ref:
            problems.insert(0, "differs from the reference")
        line = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        if problems:
            ok = False
            print(f"  {name:<14} FAIL {'; '.join(problems)}: {line}")
            if doc != ref:
                ref_line = json.dumps(ref, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
                print(f"  {'':<14}      reference: {ref_line}")
        else:
            print(f"  {name:<14} ok   {line}")
    if ok and a.save and ref is not None:
        with open(a.save, "w", encoding="utf-8") as f:
            f.write(json.dumps(ref, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
