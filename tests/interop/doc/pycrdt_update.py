"""Make one Yjs update with pycrdt (no connection), for tests/interop/doc.sh.

    python pycrdt_update.py --name NAME --out FILE

The update holds NAME's contribution as every interop client makes it (text t += "[NAME]",
m.NAME = "NAME", m.n_NAME = number_for(NAME), a += ["NAME"]) in a fresh document, v1
encoding (`Doc.get_update()`), written to FILE. Its client ID is 32-bit, as the agents'
(see py_agent.py).
"""

from __future__ import annotations

import argparse
import random
import sys

from pycrdt import Array, Doc, Map, Text


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    doc = Doc(client_id=random.randrange(1, 2**32))
    t, m, arr = doc.get("t", type=Text), doc.get("m", type=Map), doc.get("a", type=Array)
    with doc.transaction():
        t.insert(0, f"[{a.name}]")
        m[a.name] = a.name
        m[f"n_{a.name}"] = sum(map(ord, a.name))
        arr.append(a.name)
    with open(a.out, "wb") as f:
        f.write(doc.get_update())
    return 0


if __name__ == "__main__":
    sys.exit(main())
