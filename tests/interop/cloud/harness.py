"""Helpers for the interop checks: client-library agents as subprocesses, the Rust CLI.

Every wait is bounded (a deadline, never a performance threshold): a check fails with a
message saying what it waited for and what it got instead.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT = HERE / "agent.py"
CLOUD = "\u2601 "

#: generous bound for one expected event; a healthy run needs milliseconds
WAIT = float(os.environ.get("INTEROP_WAIT", "15"))


class CheckFailed(Exception):
    pass


class CheckSkipped(Exception):
    pass


def log(msg: str) -> None:
    print(f"    {msg}", flush=True)


def same(got, want) -> bool:
    """Equal value AND equal JSON type (42 is not "42"; True is not 1)."""
    return type(got) is type(want) and got == want


def show(v) -> str:
    return f"{json.dumps(v, ensure_ascii=False)} ({type(v).__name__})"


class Agent:
    """One third-party client library in its own process (agent.py)."""

    def __init__(self, lib: str, url: str, project: str, user: str, *,
                 expect_join: bool = False, join_timeout: float = WAIT, logdir: Path,
                 extra_args: tuple[str, ...] = ()):
        self.lib, self.user, self.project = lib, user, project
        self.label = f"{lib}({user})"
        self.events: list[dict] = []
        self._cv = threading.Condition()
        logdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = logdir / f"{lib}-{user}.stderr"
        self._stderr = open(self.stderr_path, "w")
        cmd = [sys.executable, "-u", str(AGENT), lib, "--url", url, "--project", project,
               "--user", user, "--join-timeout", str(join_timeout)]
        if expect_join:
            cmd.append("--expect-join")
        cmd.extend(extra_args)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, encoding="utf-8",
                                     bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        self.initial = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                ev = {"ev": "noise", "line": line}
            with self._cv:
                self.events.append(ev)
                self._cv.notify_all()
        with self._cv:
            self.events.append({"ev": "exit", "code": self.proc.wait()})
            self._cv.notify_all()

    def _wait(self, pred, timeout: float, what: str, start: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for ev in self.events[start:]:
                    if ev.get("ev") in ("error", "exit") and not pred(ev):
                        raise CheckFailed(f"{self.label} died while waiting for {what}: "
                                          f"{ev.get('error') or ev}{self._tail()}")
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"{self.label}: no {what} within {timeout:.0f} s; "
                                      f"it received {self.received()}{self._tail()}")
                self._cv.wait(left)

    def _tail(self) -> str:
        try:
            self._stderr.flush()
            text = self.stderr_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        if not text:
            return ""
        return "\n      stderr: " + "\n      ".join(text.splitlines()[-12:])

    def received(self) -> list:
        with self._cv:
            return [(e["name"], e["value"]) for e in self.events if e.get("ev") == "set"]

    def ready(self, timeout: float = WAIT + 10) -> dict | None:
        # longer than the agent's own join timeout, so that its own error is what we report
        ev = self._wait(lambda e: e.get("ev") == "ready", timeout, "ready (connected)")
        self.initial = ev.get("initial")
        self.raw_initial_names = ev.get("raw_names") or []
        return self.initial

    def set(self, name: str, value, timeout: float = WAIT) -> None:
        assert self.proc.stdin is not None
        with self._cv:
            start = len(self.events)
        self.proc.stdin.write(json.dumps({"cmd": "set", "name": name, "value": value}) + "\n")
        self.proc.stdin.flush()
        self._wait(lambda e: e.get("ev") == "sent" and e.get("name") == name,
                   timeout, f"confirmation that it sent {name}", start)

    def set_many(self, values: dict, timeout: float = WAIT) -> None:
        assert self.proc.stdin is not None
        with self._cv:
            start = len(self.events)
        self.proc.stdin.write(json.dumps({"cmd": "set_many", "values": values}) + "\n")
        self.proc.stdin.flush()
        self._wait(lambda e: e.get("ev") == "sent" and e.get("name") == "*",
                   timeout, "confirmation that it sent the batch", start)

    def expect_set(self, name: str, value, *, timeout: float = WAIT, exact_type: bool = True):
        """Wait for a `set` of `name` whose value is `value` (compared as text), then insist
        on the JSON type too when exact_type."""
        ev = self._wait(lambda e: e.get("ev") == "set" and e.get("name") == name
                        and str(e.get("value")) == str(value),
                        timeout, f"set {name}={show(value)}")
        if exact_type and not same(ev["value"], value):
            raise CheckFailed(f"{self.label}: {name} arrived as {show(ev['value'])}, "
                              f"sent as {show(value)}: the JSON type was not kept")
        return ev

    def expect_error(self, needle: str, timeout: float = WAIT) -> str:
        """Wait for the library to fail with an error mentioning `needle`."""
        ev = self._wait(lambda e: e.get("ev") in ("error", "exit"), timeout,
                        f"an error mentioning {needle!r}")
        text = ev.get("error") or f"exited with {ev.get('code')} and no error"
        if needle not in text:
            raise CheckFailed(f"{self.label} failed, but not with {needle!r}: {text}")
        return text

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=3)
        except Exception:  # noqa: BLE001
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class RustCli:
    """`nimbus cloud watch|get|set` (built on the Rust CloudConnection)."""

    def __init__(self, nimbus: str | None, url: str, logdir: Path):
        self.bin, self.url, self.logdir = nimbus, url, logdir

    def require(self) -> None:
        if not self.bin:
            raise CheckSkipped("NIMBUS_BIN not given")
        missing = []
        for sub, flags in (("set", ("--host", "--string")), ("get", ("--host", "--wait")),
                           ("watch", ("--host", "--json"))):
            r = subprocess.run([self.bin, "cloud", sub, "--help"], capture_output=True,
                               text=True, timeout=30)
            if r.returncode != 0 or not all(f in r.stdout for f in flags):
                missing.append(f"`nimbus cloud {sub} {' '.join(flags)}`")
        if missing:
            raise CheckSkipped("the Rust CLI lacks " + ", ".join(missing))

    def _run(self, sub: str, args: list[str], timeout: float = WAIT) -> subprocess.CompletedProcess:
        # options first, so that args may hold `--` (a value such as -1.5)
        cmd = [self.bin, "cloud", sub, "--host", self.url, *args]
        log("$ " + " ".join(shlex.quote(c) for c in cmd))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise CheckFailed(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s "
                              f"(stdout {e.stdout!r}, stderr {e.stderr!r})") from None
        if r.returncode != 0:
            raise CheckFailed(f"`{' '.join(cmd)}` exited {r.returncode}: "
                              f"stdout {r.stdout!r} stderr {r.stderr!r}")
        return r

    def set(self, project: str, name: str, value: str, *, string: bool = False) -> None:
        """Numbers go out as JSON numbers unless string=True (`--string`)."""
        self._run("set", (["--string"] if string else []) + ["--", project, name, value])

    def get(self, project: str, name: str) -> str:
        # --wait bounds the wait for the join frame; it returns as soon as the value is there
        return self._run("get", ["--wait", f"{WAIT:.0f}s", "--", project, name],
                         timeout=WAIT + 10).stdout.strip()

    def watch(self, project: str) -> "RustWatch":
        return RustWatch(self.bin, self.url, project, self.logdir)


class RustWatch:
    """`nimbus cloud watch <project>` in the background; each output line is kept."""

    def __init__(self, nimbus: str, url: str, project: str, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        self.label = f"nimbus cloud watch {project}"
        self.stderr_path = logdir / f"rust-watch-{project}.stderr"
        self._stderr = open(self.stderr_path, "w")
        cmd = [nimbus, "cloud", "watch", "--json", "--host", url, "--", project]
        log("$ " + " ".join(shlex.quote(c) for c in cmd) + " &")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, text=True, encoding="utf-8")
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect_set(self, name: str, value, *, timeout: float = WAIT) -> dict:
        """Wait for a `--json` line {"name": "☁ <name>", "value": <value>}, same JSON type."""
        def match(line: str) -> bool:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                return False
            return ev.get("name") == CLOUD + name and str(ev.get("value")) == str(value)
        line = self.expect(match, f"{CLOUD}{name} = {show(value)}", timeout)
        ev = json.loads(line)
        if not same(ev["value"], value):
            raise CheckFailed(f"{self.label}: {name} printed as {show(ev['value'])}, sent as "
                              f"{show(value)}: the JSON type was not kept")
        return ev

    def expect(self, match, what: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if match(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"{self.label}: no line with {what} within {timeout:.0f} s; "
                                  f"it printed {self.seen}{self._tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise CheckFailed(f"{self.label} exited ({self.proc.wait()}) before {what}; "
                                  f"it printed {self.seen}{self._tail()}")
            self.seen.append(line)

    def _tail(self) -> str:
        self._stderr.flush()
        text = self.stderr_path.read_text(errors="replace").strip()
        return ("\n      stderr: " + "\n      ".join(text.splitlines()[-12:])) if text else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
