"""discord-ext-ipc 2.1.1 Client against a nimbus IPC server (echo_server example).

usage: ext_ipc_client.py PORT MPORT KEY
"""
import asyncio
import sys

from discord.ext.ipc import Client

PORT, MPORT, KEY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


async def run(c, label):
    try:
        assert await c.request("echo", guild=1, name="☁ x") == {"guild": 1, "name": "☁ x"}
        assert await c.request("add", a=2, b=3) == 5  # same socket
        assert await c.request("/add", a=1.5, b=1) == 2.5
        r = await c.request("fail")
        assert r == {"error": "IPC route raised error of type ValueError", "code": 500}, r
        r = await c.request("nope")
        assert r["code"] == 400, r
        assert await c.request("echo") == {}  # socket still usable after errors
        print(f"ok discord-ext-ipc 2.1.1 client -> nimbus ({label}), resolved port {c.port}")
    finally:
        await c.websocket.close()
        if c.multicast is not None:
            await c.multicast.close()
        await c.session.close()


async def main():
    await run(Client(host="127.0.0.1", port=PORT, secret_key=KEY), "explicit port")
    c = Client(host="127.0.0.1", multicast_port=MPORT, secret_key=KEY)
    await run(c, "multicast discovery")
    assert c.port == PORT, (c.port, PORT)
    bad = Client(host="127.0.0.1", port=PORT, secret_key="wrong")
    try:
        assert (await bad.request("echo"))["code"] == 403
    finally:
        await bad.websocket.close()
        await bad.session.close()
    print("ok discord-ext-ipc 2.1.1 client: wrong key -> 403")


asyncio.run(main())
