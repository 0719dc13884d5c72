"""scurrypy's GatewayClient (PyPI) against nimbus's /gateway.

Usage: scurrypy_client.py PORT TOKEN NIMBUS_BIN ROOM

Points scurrypy's base_url at ws://127.0.0.1:PORT/gateway, starts the shard (scurrypy
sends "Bot TOKEN" and `shards` instead of `shard`, both accepted by nimbus), waits for
READY, produces cloud sets with `nimbus cloud set`, and checks that every one arrives as
a CLOUD_* dispatch, in order, with room/name/value.
"""
import asyncio
import subprocess
import sys

from scurrypy.core.gateway import GatewayClient

PORT, TOKEN, NIMBUS, ROOM = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
VALUES = [11, 22, 33]


async def next_event(gw, timeout=20):
    return await asyncio.wait_for(gw.event_queue.get(), timeout)


async def main():
    gw = GatewayClient()
    gw.base_url = f"ws://127.0.0.1:{PORT}/gateway"
    task = asyncio.create_task(gw.start(TOKEN, 1 | 2, 0, 1))
    name, ready = await next_event(gw)
    assert name == "READY", (name, ready)
    assert ready["v"] == 10 and ready["session_id"], ready
    assert ready["resume_gateway_url"] == gw.base_url, (ready, gw.base_url)
    print("ok READY", ready["session_id"], "shard", ready.get("shard"))
    for v in VALUES:
        subprocess.run(
            [NIMBUS, "cloud", "set", ROOM, "score", str(v), "--host", f"ws://127.0.0.1:{PORT}"],
            check=True, timeout=20, stdout=subprocess.DEVNULL,
        )
    got, joins = [], 0
    while len(got) < len(VALUES):
        name, d = await next_event(gw)
        if name in ("CLOUD_SET", "CLOUD_CREATE"):
            assert d["room"] == ROOM and d["name"] == "☁ score", d
            got.append(d["value"])
        elif name == "ROOM_JOIN":
            joins += 1
    assert got == VALUES, got
    assert joins >= 1, "ROOM_JOIN delivered with intent bit 1"
    assert gw.seq is not None and gw.seq >= 1 + len(VALUES)
    print("ok scurrypy received", got, "seq", gw.seq)
    await gw.close_ws()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


asyncio.run(main())
