"""Drive ONE real third-party Scratch cloud client library against a server.

    agent.py LIB --url ws://127.0.0.1:PORT --project P --user U

LIB is one of: scratchattach, scratchclient, scratchcloud. The installed packages are
never edited: each one is pointed at the local server the way its users do it (§11 of
shared/protocols/scratch-cloud.md): a subclass or a scheme swap, nothing else.

Protocol, one JSON object per line:
  stdin  {"cmd": "set", "name": "score", "value": 42}      -> stdout {"ev": "sent", ...}
         {"cmd": "set_many", "values": {...}}  (scratchattach only: set_vars, one frame)
         {"cmd": "quit"}
  stdout {"ev": "ready", "initial": {bare name: value}, "raw_names": [...]}
             once the library is connected and listening; "initial" is what the library
             itself took from the server's join frame (null when it does not expose it)
         {"ev": "set", "name": bare name, "raw_name": name as the library shows it,
          "value": value exactly as the library hands it to the user (JSON type kept)}
         {"ev": "error", "error": "..."}
Names are reported bare (without the "☁ " prefix) so that checks can compare libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback

CLOUD = "\u2601 "  # "☁ "

_out_lock = threading.Lock()


def emit(obj: dict) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def bare(name: str) -> str:
    return name[len(CLOUD):] if name.startswith(CLOUD) else name


def die(msg: str) -> None:
    emit({"ev": "error", "error": msg})
    sys.stdout.flush()
    os._exit(3)


def commands():
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


# ---------------------------------------------------------------- scratchattach (2.x)
def run_scratchattach(url: str, project: str, user: str, join_timeout: float,
                      expect_join: bool) -> None:
    import scratchattach as sa

    class LocalCloud(sa.TwCloud):
        """TwCloud (the class TurboWarp bots use, with its User-Agent) pointed at our server.
        Subclassed rather than given cloud_host=: the event stream re-creates a non-CustomCloud
        as `type(cloud)(project_id=...)`, which would send a plain TwCloud back to
        TurboWarp's host."""

        def __init__(self, *, project_id, **_):
            super().__init__(project_id=project_id, cloud_host=url,
                             purpose="nimbus interop test", contact="ci")

    # project ids: scratchattach keeps the caller's type; send an int when it looks like one
    pid = int(project) if project.isdigit() else project

    # 1) What a late joiner sees: a raw event stream returns the join frame as its first
    #    read (CloudEvents would drop it: 2.x ignores its first 500 ms).
    #    Only done when the caller knows the room holds variables: an empty room sends
    #    nothing (upstream behaviour), so there would be nothing to wait for.
    initial = None
    raw_names = []
    if expect_join:
        initial = {}
        snap_cloud = LocalCloud(project_id=pid)
        snap_cloud.username = user
        stream = snap_cloud.create_event_stream()
        stream.timeout = join_timeout
        try:
            for msg in stream.read():  # one receive: the join frame
                if msg.get("method") == "set":
                    raw_names.append(msg["name"])
                    initial[bare(msg["name"])] = msg["value"]
        except Exception as e:  # noqa: BLE001
            die(f"scratchattach join read failed: {e!r}")
        stream.close()

    # 2) The normal API: a cloud for sets, CloudEvents (its own second connection) for events.
    cloud = LocalCloud(project_id=pid)
    cloud.username = user
    events = cloud.events()

    @events.event
    def on_set(activity):
        emit({"ev": "set", "name": bare(activity.var), "raw_name": activity.var,
              "value": activity.value})

    events.start(thread=True)
    # Documented quirk: everything received in the first 500 ms after CloudEvents was
    # created is ignored (meant to skip the join frame). Wait it out before saying ready.
    while time.time() * 1000 < events.startup_time + 600:
        time.sleep(0.05)
    cloud.connect()
    emit({"ev": "ready", "initial": initial, "raw_names": raw_names})

    for cmd in commands():
        if cmd["cmd"] == "set":
            cloud.set_var(cmd["name"], cmd["value"])  # ints go out as JSON numbers
            emit({"ev": "sent", "name": cmd["name"], "value": cmd["value"]})
        elif cmd["cmd"] == "set_many":
            # set_vars() sends all the lines in ONE WebSocket frame
            cloud.set_vars(cmd["values"])
            emit({"ev": "sent", "name": "*", "value": cmd["values"]})
        elif cmd["cmd"] == "quit":
            break
    os._exit(0)  # CloudEvents' thread blocks in recv; don't wait for it


# ---------------------------------------------------------------- scratchclient 1.0.1
def run_scratchclient(url: str, project: str, user: str, join_timeout: float,
                      expect_join: bool) -> None:
    import scratchclient.CloudConnection as cc
    from scratchclient import ScratchSession

    host = url.split("://", 1)[1].rstrip("/")
    orig_connect = cc.Websocket.connect

    def connect_plain(self, u, headers={}):  # noqa: B006 - same signature as the library
        # scratchclient hard-codes f"wss://{cloud_host}"; our server is plain ws on loopback
        return orig_connect(self, u.replace("wss://", "ws://", 1), headers)

    cc.Websocket.connect = connect_plain

    session = ScratchSession(username=user)  # no password: no network use
    done = threading.Event()
    result = {}

    def connect():
        try:
            # blocks until the server's first frame (join frame / empty join frame)
            result["conn"] = session.create_cloud_connection(project, cloud_host=host)
        except Exception as e:  # noqa: BLE001
            result["err"] = e
        done.set()

    threading.Thread(target=connect, daemon=True).start()
    if not done.wait(join_timeout):
        die("scratchclient: no first frame from the server (its constructor blocks until one)")
    if "err" in result:
        die(f"scratchclient connect failed: {result['err']!r}")
    conn = result["conn"]
    initial = {bare(v.name): v.value for v in conn._cloudvariables}
    raw_names = [v.name for v in conn._cloudvariables]

    def on_set(var):
        emit({"ev": "set", "name": bare(var.name), "raw_name": var.name, "value": var.value})

    conn.on("set", on_set)
    emit({"ev": "ready", "initial": initial, "raw_names": raw_names})

    for cmd in commands():
        if cmd["cmd"] == "set":
            conn.set_cloud_variable(cmd["name"], cmd["value"])  # sent as a string
            emit({"ev": "sent", "name": cmd["name"], "value": cmd["value"]})
        elif cmd["cmd"] == "quit":
            break
    os._exit(0)  # its receive thread is not a daemon and never returns


# ---------------------------------------------------------------- scratchcloud 1.2.3
def run_scratchcloud(url: str, project: str, user: str, join_timeout: float,
                     expect_join: bool, send_session_cookie: bool = False) -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    import scratchcloud.client as sc_client
    from scratchcloud import CloudClient, LoginCookie

    real_ws = sc_client.websockets

    class _WsShim:
        """Stands in for the `websockets` module inside scratchcloud.client: passes every
        call through and swaps only the hard-coded wss://clouddata.scratch.mit.edu URL."""

        def __getattr__(self, name):
            return getattr(real_ws, name)

        @staticmethod
        def connect(_url, **kw):
            return real_ws.connect(url, **kw)

    class LocalClient(CloudClient):
        async def connect_ws(self):
            if send_session_cookie:
                # the library's own connect_ws, unchanged: origin + extra_headers (websockets
                # < 14) with a Cookie that carries `scratchsessionsid=` (from the LoginCookie)
                saved = sc_client.websockets
                sc_client.websockets = _WsShim()
                try:
                    await super().connect_ws()
                finally:
                    sc_client.websockets = saved
            else:
                # §11 recipe: same call without the Scratch session cookie, which nimbus
                # refuses by default (4005) to protect the user's Scratch account
                self.ws = await real_ws.connect(url, origin="https://scratch.mit.edu")

    # ignore_missing_variables: without it, a room with no join frame within 5 s raises
    # MissingCloudVariable; keep that error when the room is known to hold variables.
    client = LocalClient(user, project, event_loop=loop, ignore_missing_variables=not expect_join,
                         reconnect_cooldown=1, max_reconnect=0)
    cmd_q: asyncio.Queue = asyncio.Queue()

    def stdin_reader():
        for cmd in commands():
            loop.call_soon_threadsafe(cmd_q.put_nowait, cmd)
        loop.call_soon_threadsafe(cmd_q.put_nowait, {"cmd": "quit"})

    @client.event
    async def on_message(change):
        # change.name is name[2:] of the wire name; the value keeps its JSON type
        emit({"ev": "set", "name": change.name, "raw_name": change.name, "value": change.value})

    @client.event
    async def on_connect():
        emit({"ev": "ready", "initial": dict(client.cloud_variables),
              "raw_names": list(client.cloud_variables)})
        threading.Thread(target=stdin_reader, daemon=True).start()
        while True:
            cmd = await cmd_q.get()
            if cmd["cmd"] == "set":
                await client.set_cloud(cmd["name"], cmd["value"])  # digits-only string
                emit({"ev": "sent", "name": cmd["name"], "value": cmd["value"]})
            elif cmd["cmd"] == "quit":
                os._exit(0)

    async def main():
        # setup() = login (a LoginCookie skips the HTTP login) + connect_ws + handshake,
        # which waits up to 5 s for a first frame; then run_client() = on_connect + receive loop
        task = await client.setup(LoginCookie("interop", "interop"))
        await task

    try:
        loop.run_until_complete(main())
    except Exception as e:  # noqa: BLE001
        die(f"scratchcloud stopped: {e!r}")
    die("scratchcloud: receive loop ended (connection closed)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib", choices=["scratchattach", "scratchclient", "scratchcloud"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--join-timeout", type=float, default=10.0)
    ap.add_argument("--expect-join", action="store_true",
                    help="the room already holds variables: read the join frame")
    ap.add_argument("--send-session-cookie", action="store_true",
                    help="scratchcloud: keep its stock connect_ws and its session cookie")
    a = ap.parse_args()
    extra = {"send_session_cookie": True} if a.send_session_cookie else {}
    try:
        {"scratchattach": run_scratchattach, "scratchclient": run_scratchclient,
         "scratchcloud": run_scratchcloud}[a.lib](a.url, a.project, a.user, a.join_timeout,
                                                  a.expect_join, **extra)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001
        die(traceback.format_exc())


if __name__ == "__main__":
    main()
