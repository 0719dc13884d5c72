"""discord-ext-ipc 2.1.1 Client against `nimbus serve --ipc` (the built-in routes).

usage: ext_ipc_nimbus_serve.py PORT MPORT KEY
"""
import asyncio
import sys

from discord.ext.ipc import Client

PORT, MPORT, KEY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


async def close(c):
    await c.websocket.close()
    if c.multicast is not None:
        await c.multicast.close()
    await c.session.close()


async def main():
    c = Client(host="127.0.0.1", port=PORT, secret_key=KEY)
    try:
        assert await c.request("cloud.set", room="777", name="score", value=42) is True
        assert await c.request("cloud.set", room="777", name="☁ tag", value="0123") is True
        got = await c.request("cloud.get", room="777")
        assert got == {"☁ score": 42, "☁ tag": "0123"}, got
        assert "777" in await c.request("rooms")
        stats = await c.request("stats")
        assert stats["rooms"] >= 1 and "uptime_s" in stats, stats
        r = await c.request("cloud.set", room="777", name="x", value="not a number")
        assert r["code"] == 500, r
        print("ok discord-ext-ipc 2.1.1 client -> nimbus serve --ipc (explicit port)")
    finally:
        await close(c)
    d = Client(host="127.0.0.1", multicast_port=MPORT, secret_key=KEY)
    try:
        assert await d.request("cloud.delete", room="777", name="tag") is True
        assert await d.request("cloud.get", room="777") == {"☁ score": 42}
        assert d.port == PORT, (d.port, PORT)
        print("ok discord-ext-ipc 2.1.1 client -> nimbus serve --ipc (multicast discovery)")
    finally:
        await close(d)


asyncio.run(main())
