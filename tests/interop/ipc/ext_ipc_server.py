"""A discord-ext-ipc 2.1.1 Server (no bot login: a stub with the attributes it touches).

usage: ext_ipc_server.py PORT MPORT KEY
Routes: echo (returns the data), add (a+b), fail (raises ValueError).
"""
import asyncio
import sys

from discord.ext.ipc import Server

PORT, MPORT, KEY = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


class StubBot:
    """What Server touches: .loop, .dispatch(); no .cogs (AttributeError path = base Client)."""

    def __init__(self, loop):
        self.loop = loop

    def dispatch(self, event, *args):
        pass


loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
server = Server(StubBot(loop), host="127.0.0.1", port=PORT, secret_key=KEY, multicast_port=MPORT)


@server.route()
async def echo(data):
    return data.to_json()["data"]


@server.route()
async def add(data):
    return data.a + data.b


@server.route()
async def fail(data):
    raise ValueError("always")


server.start()
print("ready", flush=True)
loop.run_forever()
