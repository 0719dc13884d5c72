"""Interop checks: real third-party Scratch cloud clients (and our Rust CLI) against nimbus.

    checks.py list
    checks.py run NAME --url ws://127.0.0.1:PORT [--policy-url ws://...] [--nimbus BIN]
                       [--logdir DIR]

`run` prints PASS/FAIL/SKIP for one check; exit 0 = pass, 1 = fail, 77 = skipped.
Every room is a fresh project id; every value is unique within its room, so a value can
only arrive because the client that set it sent it through the server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from harness import CLOUD, Agent, CheckFailed, CheckSkipped, RustCli, log, same, show

SA, SCLIENT, SCLOUD = "scratchattach", "scratchclient", "scratchcloud"
CHECKS: dict[str, tuple] = {}


def check(name: str, doc: str, *, needs_policy: bool = False, needs_cluster: bool = False):
    def deco(fn):
        CHECKS[name] = (fn, doc, needs_policy, needs_cluster)
        return fn
    return deco


class Ctx:
    def __init__(self, url: str, policy_url: str | None, nimbus: str | None, logdir: Path,
                 cluster_urls: list[str] | None = None):
        self.url, self.policy_url, self.logdir = url, policy_url, logdir
        self.cluster_urls = cluster_urls or []
        self.cli = RustCli(nimbus, url, logdir)
        self._closers: list = []

    def agent(self, lib: str, project: str, user: str, *, url: str | None = None,
              expect_join: bool = False, extra_args: tuple[str, ...] = ()) -> Agent:
        log(f"join {lib} as {user} in room {project}"
            + (" (strict: must get a first frame)" if expect_join else "")
            + (" " + " ".join(extra_args) if extra_args else ""))
        a = Agent(lib, url or self.url, project, user, expect_join=expect_join,
                  logdir=self.logdir, extra_args=extra_args)
        self._closers.append(a)
        return a

    def watch(self, project: str):
        w = self.cli.watch(project)
        self._closers.append(w)
        return w

    def close(self) -> None:
        for c in reversed(self._closers):
            c.close()


def ready_all(*agents: Agent) -> None:
    """Agents start in parallel (each is its own process); wait for every one."""
    for a in agents:
        a.ready()
        log(f"{a.label} connected; join frame gave it {a.initial}")


def send(sender: Agent, name: str, value, receivers: list[Agent], *, exact_type=True) -> None:
    log(f"{sender.label} sets {name} = {show(value)}")
    sender.set(name, value)
    for r in receivers:
        ev = r.expect_set(name, value, exact_type=exact_type)
        log(f"  {r.label} received {name} = {show(ev['value'])}")


def seed(ctx: Ctx, project: str, name: str, value, *, url: str | None = None) -> Agent:
    """Put one variable in a room and make sure the server has applied it.

    scratchclient blocks until a first frame and scratchcloud waits 5 s for one, and an
    empty room sends nothing (upstream behaviour), so their rooms are seeded first.
    scratchattach's events use a second connection, which receives its own set_var back
    from the server: that echo proves the server applied the set before anyone joins."""
    s = ctx.agent(SA, project, "seeder", url=url)
    ready_all(s)
    log(f"seed: {s.label} sets {name} = {show(value)}")
    s.set(name, value)
    s.expect_set(name, value)
    return s


def expect_initial(a: Agent, want: dict) -> None:
    got = a.initial
    if got is None:
        raise CheckFailed(f"{a.label} exposes no join-frame values")
    for k, v in want.items():
        if k not in got:
            raise CheckFailed(f"{a.label}: join frame lacks {k}; it gave {got}")
        if not same(got[k], v):
            raise CheckFailed(f"{a.label}: join frame gave {k} = {show(got[k])}, "
                              f"want {show(v)}")


# ------------------------------------------------------------------ one library at a time
@check("scratchattach-pair",
       "two scratchattach clients: each sets a variable and receives the other's (ints as JSON "
       "numbers, digit strings as strings)")
def scratchattach_pair(ctx: Ctx) -> None:
    a, b = ctx.agent(SA, "101", "sa_alice"), ctx.agent(SA, "101", "sa_bob")
    ready_all(a, b)
    send(a, "score", 42, [b])
    send(b, "score", 43, [a])
    send(a, "code", "0123", [b])  # a string stays a string, leading zero kept


@check("scratchclient-pair",
       "two scratchclient clients (room seeded so its constructor gets a first frame): each "
       "sets a variable and receives the other's")
def scratchclient_pair(ctx: Ctx) -> None:
    seed(ctx, "102", "seed", 1)
    a = ctx.agent(SCLIENT, "102", "scl_alice", expect_join=True)
    b = ctx.agent(SCLIENT, "102", "scl_bob", expect_join=True)
    ready_all(a, b)
    expect_initial(a, {"seed": 1})
    send(a, "score", "52", [b])
    send(b, "score", "53", [a])


@check("scratchcloud-pair",
       "two scratchcloud clients join an EMPTY room (no join frame: they go on after their 5 s "
       "wait), each sets and receives the other's; a third joins strictly and gets both values")
def scratchcloud_pair(ctx: Ctx) -> None:
    a = ctx.agent(SCLOUD, "103", "scd_alice")
    b = ctx.agent(SCLOUD, "103", "scd_bob")
    ready_all(a, b)
    send(a, "score", "62", [b])
    send(b, "level", "63", [a])
    # ignore_missing_variables=False: raises MissingCloudVariable without a first frame
    c = ctx.agent(SCLOUD, "103", "scd_carol", expect_join=True)
    ready_all(c)
    expect_initial(c, {"score": "62", "level": "63"})


@check("scratchcloud-session-cookie-refused",
       "scratchcloud's stock connect_ws sends a `scratchsessionsid=` cookie: the default server "
       "closes it with 4005 (protects the user's Scratch account); the room stays usable")
def scratchcloud_cookie(ctx: Ctx) -> None:
    s = seed(ctx, "108", "seed", 1)
    bad = ctx.agent(SCLOUD, "108", "scd_cookie", extra_args=("--send-session-cookie",))
    err = bad.expect_error("4005")
    log(f"{bad.label} was refused: {err.strip().splitlines()[-1][:200]}")
    ok = ctx.agent(SCLOUD, "108", "scd_nocookie", expect_join=True)
    ready_all(ok)
    send(s, "after", 81, [ok])


# ------------------------------------------------------------------ across libraries
def matrix(ctx: Ctx, project: str, url: str | None, seeded: bool) -> None:
    if seeded:
        sa = seed(ctx, project, "seed", 1, url=url)
    else:
        sa = ctx.agent(SA, project, "sa_x", url=url)
        ready_all(sa)
    sc = ctx.agent(SCLIENT, project, "scl_x", url=url, expect_join=seeded)
    sd = ctx.agent(SCLOUD, project, "scd_x", url=url, expect_join=True)
    ready_all(sc, sd)
    if seeded:
        expect_initial(sc, {"seed": 1})
        expect_initial(sd, {"seed": 1})
    send(sa, "from_sa", 1001, [sc, sd])          # JSON number in, JSON number out
    send(sc, "from_sclient", "2002", [sa, sd])   # scratchclient sends strings
    send(sd, "from_scloud", "3003", [sa, sc])    # scratchcloud sends strings
    send(sa, "from_sa", 1004, [sc, sd])          # an update of an existing variable


@check("cross-library-matrix",
       "scratchattach, scratchclient and scratchcloud in one room: every library's set reaches "
       "both other libraries (3x2 matrix), value and JSON type intact")
def cross_library_matrix(ctx: Ctx) -> None:
    matrix(ctx, "104", None, seeded=True)


@check("late-joiner-join-frame",
       "scratchattach set_vars() (several lines in ONE frame, mixed types, one variable "
       "overwritten); late joiners of all three libraries get the current values in the join "
       "frame, in insertion order, types kept")
def late_joiner(ctx: Ctx) -> None:
    s = ctx.agent(SA, "105", "sa_writer")
    ready_all(s)
    batch = {"a": 1, "b": "2", "c": 3}
    log(f"{s.label} set_vars({batch}) in one frame")
    s.set_many(batch)
    for k, v in batch.items():
        s.expect_set(k, v)  # echoed to its own event connection: applied by the server
    send(s, "a", 10, [])    # last writer wins
    s.expect_set("a", 10)
    want = {"a": 10, "b": "2", "c": 3}
    late = [ctx.agent(SA, "105", "sa_late", expect_join=True),
            ctx.agent(SCLIENT, "105", "scl_late", expect_join=True),
            ctx.agent(SCLOUD, "105", "scd_late", expect_join=True)]
    ready_all(*late)
    for a in late:
        expect_initial(a, want)
        if set(a.initial) != set(want):
            raise CheckFailed(f"{a.label}: join frame has extra variables: {a.initial}")
    # scratchclient keeps the join frame's order and the raw names
    names = late[1].raw_initial_names
    if names != [CLOUD + k for k in want]:
        raise CheckFailed(f"{late[1].label}: join frame names/order {names}, want "
                          f"{[CLOUD + k for k in want]} (room insertion order, byte-exact names)")
    log(f"join frame names in order: {names}")


# ------------------------------------------------------------------ our Rust client
@check("rust-cli-set-to-python",
       "`nimbus cloud set` (Rust CloudConnection) is received by scratchattach, scratchclient "
       "and scratchcloud: numbers as JSON numbers, --string as strings, -1.5 intact; a name "
       "given with '☁ ' is not doubled")
def rust_set(ctx: Ctx) -> None:
    ctx.cli.require()
    seed(ctx, "106", "seed", 1)
    sa = ctx.agent(SA, "106", "sa_r")
    sc = ctx.agent(SCLIENT, "106", "scl_r", expect_join=True)
    sd = ctx.agent(SCLOUD, "106", "scd_r", expect_join=True)
    ready_all(sa, sc, sd)
    receivers = (sa, sc, sd)
    for name, arg, string, want in (("fromrust", "4242", False, 4242),
                                    (CLOUD + "prefixed", "4343", True, "4343"),
                                    ("negative", "-1.5", False, -1.5)):
        ctx.cli.set("106", name, arg, string=string)
        for r in receivers:
            ev = r.expect_set(name.removeprefix(CLOUD), want)
            log(f"  {r.label} received {ev['raw_name']!r} = {show(ev['value'])}")
    # scratchclient shows the full wire name: it must be exactly "☁ prefixed"
    got = [e["raw_name"] for e in sc.events if e.get("ev") == "set" and e["name"] == "prefixed"]
    if got != [CLOUD + "prefixed"]:
        raise CheckFailed(f"wire name of a prefixed set was {got}, want ['☁ prefixed']")


@check("python-to-rust-cli-watch-get",
       "`nimbus cloud watch` prints the join frame, then the sets of scratchattach, scratchclient "
       "and scratchcloud with their JSON types; `nimbus cloud get` (a late joiner) prints the "
       "current value of each")
def rust_watch(ctx: Ctx) -> None:
    ctx.cli.require()
    sa = seed(ctx, "107", "seed", 1)
    w = ctx.watch("107")
    log(f"  watch printed (join frame): {w.expect_set('seed', 1)}")  # also: it is connected
    sc = ctx.agent(SCLIENT, "107", "scl_w", expect_join=True)
    sd = ctx.agent(SCLOUD, "107", "scd_w", expect_join=True)
    ready_all(sc, sd)
    sent = [(sa, "from_sa", 5151), (sc, "from_sclient", "6161"), (sd, "from_scloud", "7171")]
    for who, name, value in sent:
        log(f"{who.label} sets {name} = {show(value)}")
        who.set(name, value)
        log(f"  watch printed: {w.expect_set(name, value)}")
    for _, name, value in sent + [(None, "seed", 1)]:
        got = ctx.cli.get("107", name)
        log(f"  nimbus cloud get 107 {name} -> {got!r}")
        if got != str(value):
            raise CheckFailed(f"`nimbus cloud get 107 {name}` printed {got!r}, want {value}")


# ------------------------------------------------------------------ server policies
@check("policies-empty-room-matrix",
       "on a server with empty_join_frame + one_message_per_frame: scratchclient and a strict "
       "scratchcloud join an EMPTY room without seeding, then the 3x2 matrix passes",
       needs_policy=True)
def policy_matrix(ctx: Ctx) -> None:
    matrix(ctx, "201", ctx.policy_url, seeded=False)


# ------------------------------------------------------------------ several nodes (--redis)
@check("cluster-three-libraries",
       "two `nimbus serve --redis` nodes sharing one redis-server: scratchattach on node A, "
       "scratchclient and scratchcloud on node B join a room seeded through node A (both get the "
       "value in their join frame), and each library's set reaches the other two across nodes",
       needs_cluster=True)
def cluster_three_libraries(ctx: Ctx) -> None:
    a_url, b_url = ctx.cluster_urls[0], ctx.cluster_urls[1]
    sa = seed(ctx, "301", "seed", 1, url=a_url)
    sc = ctx.agent(SCLIENT, "301", "scl_b", url=b_url, expect_join=True)
    sd = ctx.agent(SCLOUD, "301", "scd_b", url=b_url, expect_join=True)
    ready_all(sc, sd)
    expect_initial(sc, {"seed": 1})
    expect_initial(sd, {"seed": 1})
    send(sa, "from_a", "7101", [sc, sd], exact_type=False)
    send(sc, "from_sclient", "7202", [sa, sd], exact_type=False)
    send(sd, "from_scloud", "7303", [sa, sc], exact_type=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    r = sub.add_parser("run")
    r.add_argument("name", choices=sorted(CHECKS))
    r.add_argument("--url", required=True)
    r.add_argument("--policy-url")
    r.add_argument("--policy-missing-reason", default="no policy server")
    r.add_argument("--cluster-urls", help="comma-separated URLs of nodes sharing one Redis")
    r.add_argument("--cluster-missing-reason", default="no --redis nodes")
    r.add_argument("--nimbus")
    r.add_argument("--logdir")
    a = ap.parse_args()
    if a.cmd == "list":
        for name, (_, doc, _, _) in CHECKS.items():
            print(f"{name}\t{doc}")
        return 0
    fn, doc, needs_policy, needs_cluster = CHECKS[a.name]
    logdir = Path(a.logdir or tempfile.mkdtemp(prefix="interop-")) / a.name
    cluster = [u for u in (a.cluster_urls or "").split(",") if u]
    ctx = Ctx(a.url, a.policy_url, a.nimbus, logdir, cluster)
    print(f"--- {a.name}: {doc}", flush=True)
    t0 = time.monotonic()
    status, why = "PASS", ""
    try:
        if needs_policy and not a.policy_url:
            raise CheckSkipped(a.policy_missing_reason)
        if needs_cluster and len(cluster) < 2:
            raise CheckSkipped(a.cluster_missing_reason)
        fn(ctx)
    except CheckSkipped as e:
        status, why = "SKIP", str(e)
    except CheckFailed as e:
        status, why = "FAIL", str(e)
    except Exception:  # noqa: BLE001
        status, why = "FAIL", traceback.format_exc()
    finally:
        ctx.close()
    dt = time.monotonic() - t0
    print(f"{status} {a.name} ({dt:.1f} s){': ' + why if why else ''}", flush=True)
    return {"PASS": 0, "SKIP": 77}.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
