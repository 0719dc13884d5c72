"""scurrypy's GatewayClient (PyPI) with a signed token (minted by PyJWT, PyPI) whose
`gateway` grant covers two rooms: nimbus dispatches the events of those rooms only.

Usage: scurrypy_rooms.py PORT SECRET NIMBUS_BIN

The token (HS256, kid hs-1) grants rooms r1 and r2 with the cloud intent (1). Sets go to
r1, r3, r2, r3, r1 (one `nimbus cloud set` after the other, so the events are published in
that order); the bot must receive CLOUD_* dispatches of r1, r2, r1 and nothing of r3.
"""
import asyncio
import subprocess
import sys
import time

import jwt
from scurrypy.core.gateway import GatewayClient

PORT, SECRET, NIMBUS = sys.argv[1], sys.argv[2], sys.argv[3]
SETS = ["r1", "r3", "r2", "r3", "r1"]


async def main():
    token = jwt.encode(
        {"sub": "bot", "exp": int(time.time()) + 600,
         "nimbus": {"gateway": {"ro": ["r1", "r2"], "intents": 1}}},
        SECRET, algorithm="HS256", headers={"kid": "hs-1"})
    gw = GatewayClient()
    gw.base_url = f"ws://127.0.0.1:{PORT}/gateway"
    task = asyncio.create_task(gw.start(token, 1, 0, 1))
    name, ready = await asyncio.wait_for(gw.event_queue.get(), 20)
    assert name == "READY", (name, ready)
    print("ok READY with a signed token", ready["session_id"])
    for i, room in enumerate(SETS):
        subprocess.run(
            [NIMBUS, "cloud", "set", room, "x", str(i), "--host", f"ws://127.0.0.1:{PORT}"],
            check=True, timeout=20, stdout=subprocess.DEVNULL,
        )
    rooms = []
    while len(rooms) < 3:
        name, d = await asyncio.wait_for(gw.event_queue.get(), 20)
        if name.startswith("CLOUD_"):
            rooms.append(d["room"])
    assert rooms == ["r1", "r2", "r1"], rooms
    print("ok scurrypy received the rooms of its token only:", rooms)
    await gw.close_ws()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


asyncio.run(main())
