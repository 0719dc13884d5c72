-- One room's changes of a writer batch, in order (KEYS/ARGV: CLOUD_SCRIPT in lua.rs).
-- Each change is checked and ordered exactly as if it came alone; what the changes share
-- (the epoch, the variable count, what is known of a name) is read once and kept here.
-- Writes that only the end state matters for are made once per call, before anything is
-- appended or published: the state hash's values (one HSET, one HDEL) and the counter
-- (one INCRBY, so a command failing after it never leaves a published sequence number to
-- be taken again); the history list is pushed, trimmed and renewed once.
-- (No pcall: in Redis 7.0 it makes every call about twice as slow.)
local keep = tonumber(ARGV[5] or '0') or 0
local epoch = false
-- The variable count when first needed, and what this call changed it by since.
local count0 = false
local delta = 0
-- The room's counter when first needed, and the last number taken.
local base = false
local seq = false
-- name -> {e = exists, p = position or nil (not read yet), v = value or nil (not read
-- yet; false: none)}
local known = {}
-- The values this call leaves in the state hash (false: deleted), in first-write order.
local final = {}
local touched = {}
local pending = {}
local hist = {}
local out = {}
-- A call of more than 3 changes trims both streams once, at the end (one XTRIM each
-- costs less than MAXLEN in every XADD); a smaller one trims in its XADDs.
local trim_at_end = (#ARGV - 6) / 5 > 3

local function state(name)
  local s = known[name]
  if not s then
    s = { e = redis.call('HEXISTS', KEYS[3], name) == 1 }
    known[name] = s
  end
  return s
end

local function position(name, s)
  if s.p == nil then s.p = redis.call('HGET', KEYS[4], name) end
  return s.p
end

local function value(name, s)
  if s.v == nil then s.v = redis.call('HGET', KEYS[3], name) end
  return s.v
end

local function put(name, s, v)
  if final[name] == nil then touched[#touched + 1] = name end
  final[name] = v
  s.v = v
end

local function change(op, name, arg, maxv, json)
  local s = state(name)
  local pos = 0
  local created = 0
  local hv = false
  if op == 's' then
    if not s.e then
      if not count0 then count0 = redis.call('HLEN', KEYS[3]) end
      if count0 + delta >= tonumber(maxv) then return -1 end
      created = 1
      pos = redis.call('INCR', KEYS[5]) - 1
      redis.call('HSET', KEYS[4], name, pos)
      s.e, s.p = true, pos
      delta = delta + 1
    else
      pos = position(name, s)
    end
    put(name, s, arg)
  elseif op == 'd' then
    if not s.e then return -1 end
    hv = value(name, s)
    redis.call('HDEL', KEYS[4], name)
    put(name, s, false)
    s.e, s.p = false, false
    delta = delta - 1
  elseif op == 'r' then
    local t = state(arg)
    if not s.e or t.e then return -1 end
    local v = value(name, s)
    hv = v
    pos = position(name, s)
    redis.call('HDEL', KEYS[4], name)
    redis.call('HSET', KEYS[4], arg, pos)
    put(name, s, false)
    put(arg, t, v)
    s.e, s.p = false, false
    t.e, t.p = true, pos
  end
  if not base then
    base = tonumber(redis.call('GET', KEYS[1]) or '0')
    seq = base
  end
  seq = seq + 1
  if seq == 1 then
    redis.call('SET', KEYS[2], ARGV[1])
    redis.call('DEL', KEYS[6])
    epoch = false
  end
  if not epoch then epoch = redis.call('GET', KEYS[2]) or ARGV[1] end
  if hv then
    json = string.sub(json, 1, -2) .. ',"hv":' .. cjson.encode(hv) .. '}'
  end
  local n = tostring(seq)
  local msg = epoch .. ' ' .. n .. ' ' .. pos .. ' ' .. created .. ' ' .. json
  pending[#pending + 1] = n
  pending[#pending + 1] = msg
  if keep > 0 then hist[#hist + 1] = msg end
  return seq
end

for i = 7, #ARGV, 5 do
  local op = ARGV[i]
  if op ~= 's' and op ~= 'd' and op ~= 'r' then return redis.error_reply('unknown op') end
end
for i = 7, #ARGV, 5 do
  out[#out + 1] = change(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
if #touched > 0 then
  local set, del = {}, {}
  for _, name in ipairs(touched) do
    local v = final[name]
    if v then
      set[#set + 1] = name
      set[#set + 1] = v
    else
      del[#del + 1] = name
    end
  end
  if #set > 0 then redis.call('HSET', KEYS[3], unpack(set)) end
  if #del > 0 then redis.call('HDEL', KEYS[3], unpack(del)) end
end
if seq then redis.call('INCRBY', KEYS[1], seq - base) end
for i = 1, #pending, 2 do
  local n, msg = pending[i], pending[i + 1]
  local cmsg = 'c ' .. msg
  local gid
  if trim_at_end then
    redis.call('XADD', KEYS[6], n .. '-0', 'm', msg)
    gid = redis.call('XADD', KEYS[7], '*', 'm', cmsg)
  else
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], n .. '-0', 'm', msg)
    gid = redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', 'm', cmsg)
  end
  redis.call('PUBLISH', ARGV[3], gid .. ' ' .. cmsg)
end
-- MAXLEN ~ either way: the same entries go; a call failing part-way leaves the streams a
-- little longer until the next one.
if #pending > 0 and trim_at_end then
  redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', ARGV[2])
  redis.call('XTRIM', KEYS[7], 'MAXLEN', '~', ARGV[4])
end
if #hist > 0 then
  redis.call('LPUSH', KEYS[8], unpack(hist))
  redis.call('LTRIM', KEYS[8], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[8], ARGV[6])
end
return out
