#!/usr/bin/env python3
"""Redis CPU per cloud change of CLOUD_SCRIPT, and of format variants derived from it.

What a change of the backplane's format would buy, before building one: each variant is
the script of commit BASE (default 378a69b) with one part of its per-change work moved to
once per call. Variants (each derived one includes the ones before it):

  current   the script in the working tree (`crates/redis/src/lua/cloud.lua`)
  base      the script at BASE: per change INCR, HSET, XADD room stream, XADD global
            stream, PUBLISH
  global1   one XADD to the global stream (one field `m` per change) and one PUBLISH per call
  room1     ... and one XADD to the room's stream per call (entry id: the first sequence)
  counter1  ... and the counter read once and set once, the state hash written with one HSET
            (NOT correct for calls that mix renames or deletes with sets: a cost bound only)
  lua-only  no Redis command at all: the loop over the arguments and the message strings
  args-only no Redis command and no strings: the arguments reaching Lua

A fresh redis-server per run (AOF everysec, no RDB, one subscriber draining the channel);
CALLS calls of PER_CALL sets (different names of one room; 64 rooms in turn), pipelined 64
at a time. Prints Redis CPU (user+system from INFO cpu) per change and EVALSHA usec per
call. Loopback only; every run ends by itself.

    python3 bench/redis_script_cost.py                     # every variant, in turn, x3
    python3 bench/redis_script_cost.py current base        # some, x3
    BASE=<commit> python3 bench/redis_script_cost.py current base
    ROUNDS=1 CALLS=2000 PER_CALL=32 python3 bench/redis_script_cost.py
"""
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "crates", "redis", "src", "lua", "cloud.lua")
BASE = os.environ.get("BASE", "378a69b")
CALLS = int(os.environ.get("CALLS", "6000"))
PER_CALL = int(os.environ.get("PER_CALL", "16"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PORT = int(os.environ.get("PORT", "16411"))


def sub(text, old, new):
    if old not in text:
        sys.exit(f"cloud.lua of {BASE}: cannot derive a variant (missing {old[:50]!r})")
    return text.replace(old, new)


def variants():
    a = subprocess.run(["git", "-C", HERE, "show", f"{BASE}:crates/redis/src/lua/cloud.lua"],
                       check=True, capture_output=True, text=True).stdout
    b = sub(a, """  local gid
  if trim_at_end then
    redis.call('XADD', KEYS[6], n .. '-0', 'm', msg)
    gid = redis.call('XADD', KEYS[7], '*', 'm', cmsg)
  else
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], n .. '-0', 'm', msg)
    gid = redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', 'm', cmsg)
  end
  redis.call('PUBLISH', ARGV[3], gid .. ' ' .. cmsg)""", """  if trim_at_end then
    redis.call('XADD', KEYS[6], n .. '-0', 'm', msg)
  else
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], n .. '-0', 'm', msg)
  end
  gfields[#gfields + 1] = 'm'
  gfields[#gfields + 1] = cmsg""")
    b = sub(b, "local appended = false", "local appended = false\nlocal gfields = {}")
    b = sub(b, "if appended and trim_at_end then", """if appended then
  local gid = redis.call('XADD', KEYS[7], '*', unpack(gfields))
  local body = {}
  for i = 2, #gfields, 2 do body[#body + 1] = gfields[i] end
  redis.call('PUBLISH', ARGV[3], gid .. ' B ' .. table.concat(body, '\\n'))
end
if appended and trim_at_end then""")
    c = sub(b, """  if trim_at_end then
    redis.call('XADD', KEYS[6], n .. '-0', 'm', msg)
  else
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], n .. '-0', 'm', msg)
  end
""", """  if not first then first = n end
  rfields[#rfields + 1] = 'm'
  rfields[#rfields + 1] = msg
""")
    c = sub(c, "local gfields = {}", "local gfields = {}\nlocal rfields = {}\nlocal first = false")
    c = sub(c, """if appended then
  local gid""", """if appended then
  redis.call('XADD', KEYS[6], first .. '-0', unpack(rfields))
  local gid""")
    d = sub(c, """    redis.call('HSET', KEYS[3], name, arg)
  elseif op == 'd' then""", """    hsets[#hsets + 1] = name
    hsets[#hsets + 1] = arg
  elseif op == 'd' then""")
    d = sub(d, "  local seq = redis.call('INCR', KEYS[1])", """  if not base then base = tonumber(redis.call('GET', KEYS[1]) or '0') end
  base = base + 1
  local seq = base""")
    d = sub(d, "local first = false", "local first = false\nlocal hsets = {}\nlocal base = false")
    d = sub(d, """if appended then
  redis.call('XADD', KEYS[6]""", """if #hsets > 0 then redis.call('HSET', KEYS[3], unpack(hsets)) end
if base then redis.call('SET', KEYS[1], base) end
if appended then
  redis.call('XADD', KEYS[6]""")
    lua_only = """local out = {}
local body = {}
for i = 7, #ARGV, 5 do
  local n = tostring(i)
  local msg = 'epoch' .. ' ' .. n .. ' ' .. 0 .. ' ' .. 0 .. ' ' .. ARGV[i + 4]
  body[#body + 1] = 'c ' .. msg
  out[#out + 1] = i
end
return out
"""
    args_only = """local out = {}
for i = 7, #ARGV, 5 do out[#out + 1] = i end
return out
"""
    return {"current": open(SCRIPT).read(), "base": a, "global1": b, "room1": c, "counter1": d,
            "lua-only": lua_only, "args-only": args_only}


def resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    line = f.readline()
    if line.startswith(b"-"):
        sys.exit(f"redis error: {line!r}")
    if line.startswith(b"*"):
        return [read_reply(f) for _ in range(int(line[1:]))]
    if line.startswith(b"$"):
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line


def info(s, f, section):
    s.sendall(resp(["INFO", section]))
    body = read_reply(f).decode()
    return dict(l.split(":", 1) for l in body.split("\r\n") if ":" in l)


def run(name, text):
    d = tempfile.mkdtemp()
    srv = subprocess.Popen(["redis-server", "--port", str(PORT), "--bind", "127.0.0.1",
                            "--dir", d, "--appendonly", "yes", "--appendfsync", "everysec",
                            "--save", ""], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                s = socket.create_connection(("127.0.0.1", PORT))
                break
            except OSError:
                time.sleep(0.1)
        f = s.makefile("rb")
        listener = socket.create_connection(("127.0.0.1", PORT))
        listener.sendall(resp(["SUBSCRIBE", "nimbus:events"]))
        done = threading.Event()

        def drain():
            listener.settimeout(0.2)
            while not done.is_set():
                try:
                    if not listener.recv(1 << 20):
                        return
                except socket.timeout:
                    pass

        t = threading.Thread(target=drain)
        t.start()
        sha = hashlib.sha1(text.encode()).hexdigest()
        s.sendall(resp(["SCRIPT", "LOAD", text]))
        read_reply(f)
        reqs = []
        for i in range(CALLS):
            room = "r%d" % (i % 64)
            k = lambda w: "nimbus:cloud:{%s}:%s" % (room, w)
            a = ["EVALSHA", sha, 8, k("seq"), k("epoch"), k("vars"), k("pos"), k("npos"),
                 k("log"), "nimbus:events", k("hist"), "node-1", 10000, "nimbus:events",
                 100000, 0, 1]
            for j in range(PER_CALL):
                v = i * PER_CALL + j
                js = ('{"r":"%s","o":"s","n":"\u2601 v%d","v":"%d","num":true,"nd":"node-1",'
                      '"c":%d,"ts":1765000000000}' % (room, j, v, j))
                a += ["s", "\u2601 v%d" % j, "n%d" % v, 1000, js]
            reqs.append(resp(a))
        cpu = lambda: sum(float(info(s, f, "cpu")[k]) for k in ("used_cpu_sys", "used_cpu_user"))
        c0 = cpu()
        for i in range(0, CALLS, 64):
            s.sendall(b"".join(reqs[i:i + 64]))
            for _ in reqs[i:i + 64]:
                read_reply(f)
        c1 = cpu()
        stats = info(s, f, "commandstats")["cmdstat_evalsha"]
        per_call = float(dict(p.split("=") for p in stats.split(","))["usec_per_call"])
        done.set()
        t.join()
        return (c1 - c0) / (CALLS * PER_CALL) * 1e6, per_call
    finally:
        srv.terminate()
        srv.wait()


def main():
    all_variants = variants()
    names = sys.argv[1:] or list(all_variants)
    results = {n: [] for n in names}
    for _ in range(ROUNDS):
        for n in names:
            results[n].append(run(n, all_variants[n]))
    print(f"{CALLS} calls x {PER_CALL} sets, {ROUNDS} rounds interleaved; median (runs)")
    for n in names:
        us = [r[0] for r in results[n]]
        pc = [r[1] for r in results[n]]
        print(f"{n:10} {statistics.median(us):6.2f} us Redis CPU per change "
              f"({' '.join(f'{x:.2f}' for x in us)}); EVALSHA {statistics.median(pc):7.1f} us per call")


if __name__ == "__main__":
    main()
