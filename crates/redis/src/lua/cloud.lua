local op, name = ARGV[1], ARGV[2]
local exists = redis.call('HEXISTS', KEYS[3], name)
local pos = 0
local created = 0
local hv = false
if op == 's' then
  if exists == 0 then
    created = 1
    if redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[4]) then return -1 end
    pos = redis.call('INCR', KEYS[5]) - 1
    redis.call('HSET', KEYS[4], name, pos)
  else
    pos = redis.call('HGET', KEYS[4], name)
  end
  redis.call('HSET', KEYS[3], name, ARGV[3])
elseif op == 'd' then
  if exists == 0 then return -1 end
  hv = redis.call('HGET', KEYS[3], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
elseif op == 'r' then
  if exists == 0 or redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return -1 end
  local v = redis.call('HGET', KEYS[3], name)
  hv = v
  pos = redis.call('HGET', KEYS[4], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
  redis.call('HSET', KEYS[3], ARGV[3], v)
  redis.call('HSET', KEYS[4], ARGV[3], pos)
else
  return redis.error_reply('unknown op')
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  redis.call('SET', KEYS[2], ARGV[5])
  redis.call('DEL', KEYS[6])
end
local epoch = redis.call('GET', KEYS[2]) or ARGV[5]
local change = ARGV[6]
if hv then
  change = string.sub(change, 1, -2) .. ',"hv":' .. cjson.encode(hv) .. '}'
end
local msg = epoch .. ' ' .. seq .. ' ' .. pos .. ' ' .. created .. ' ' .. change
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], seq .. '-0', 'm', msg)
local gid = redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', 'm', 'c ' .. msg)
redis.call('PUBLISH', ARGV[8], gid .. ' c ' .. msg)
local keep = tonumber(ARGV[10] or '0')
if keep and keep > 0 then
  redis.call('LPUSH', KEYS[8], msg)
  redis.call('LTRIM', KEYS[8], 0, keep - 1)
  redis.call('PEXPIRE', KEYS[8], ARGV[11])
end
return seq
