"""better-ipc 2.0.3 Client against a nimbus IPC server (both ports serve both dialects).

usage: better_ipc_client.py PORT MPORT KEY
"""
import asyncio
import sys

from discord.ext.ipc import Client

PORT, MPORT, KEY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


async def main():
    for port in (MPORT, PORT):
        c = Client(host="127.0.0.1", secret_key=KEY, multicast_port=port)
        r = await c.request("echo", guild=1)
        assert r.status.value == 200 and r.response == {"guild": 1}, (r.status, r.response)
        r = await c.request("add", a=2, b=40)
        assert r.status.value == 200 and r.response == 42, (r.status, r.response)
        r = await c.request("nope")
        assert r.status.value == 404, r.status
        r = await c.request("fail")
        assert r.status.value == 500, r.status
        bad = Client(host="127.0.0.1", secret_key="wrong", multicast_port=port)
        r = await bad.request("echo")
        assert r.status.value == 403, r.status
        print(f"ok better-ipc 2.0.3 client -> nimbus port {port}: 200/404/500/403")


asyncio.run(main())
