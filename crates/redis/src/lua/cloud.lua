-- One room's changes of a writer batch, in order (KEYS/ARGV: CLOUD_SCRIPT in lua.rs).
-- Each change is checked and ordered exactly as if it came alone; what the changes share
-- (the epoch, the variable count, what is known of a name) is read
-- once and kept here; the history list is pushed, trimmed and renewed once. The counter
-- is incremented per change, before the change is published, as a lone change does, so
-- a command failing part-way never leaves a published sequence number to be taken again.
-- (No pcall: in Redis 7.0 it makes every call about twice as slow.)
local keep = tonumber(ARGV[5] or '0') or 0
local epoch = false
local count = false
-- name -> {e = exists, p = position or nil (not read yet)}
local known = {}
local hist = {}
local out = {}
-- A call of more than 3 changes trims both streams once, at the end (one XTRIM each
-- costs less than MAXLEN in every XADD); a smaller one trims in its XADDs.
local trim_at_end = (#ARGV - 6) / 5 > 3
local appended = false

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

local function change(op, name, arg, maxv, json)
  local s = state(name)
  local pos = 0
  local created = 0
  local hv = false
  if op == 's' then
    if not s.e then
      if not count then count = redis.call('HLEN', KEYS[3]) end
      if count >= tonumber(maxv) then return -1 end
      created = 1
      pos = redis.call('INCR', KEYS[5]) - 1
      redis.call('HSET', KEYS[4], name, pos)
      s.e, s.p = true, pos
      count = count + 1
    else
      pos = position(name, s)
    end
    redis.call('HSET', KEYS[3], name, arg)
  elseif op == 'd' then
    if not s.e then return -1 end
    hv = redis.call('HGET', KEYS[3], name)
    redis.call('HDEL', KEYS[3], name)
    redis.call('HDEL', KEYS[4], name)
    s.e, s.p = false, false
    if count then count = count - 1 end
  elseif op == 'r' then
    local t = state(arg)
    if not s.e or t.e then return -1 end
    local v = redis.call('HGET', KEYS[3], name)
    hv = v
    pos = position(name, s)
    redis.call('HDEL', KEYS[3], name)
    redis.call('HDEL', KEYS[4], name)
    redis.call('HSET', KEYS[3], arg, v)
    redis.call('HSET', KEYS[4], arg, pos)
    s.e, s.p = false, false
    t.e, t.p = true, pos
  end
  local seq = redis.call('INCR', KEYS[1])
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
  appended = true
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
-- MAXLEN ~ either way: the same entries go; a call failing part-way leaves the streams a
-- little longer until the next one.
if appended and trim_at_end then
  redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', ARGV[2])
  redis.call('XTRIM', KEYS[7], 'MAXLEN', '~', ARGV[4])
end
if #hist > 0 then
  redis.call('LPUSH', KEYS[8], unpack(hist))
  redis.call('LTRIM', KEYS[8], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[8], ARGV[6])
end
return out
