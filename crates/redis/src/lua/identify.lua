-- A bot's Identify (identify.rs). KEYS: starts (sorted set: one member per start, scored by
-- Redis' clock in ms), bucket (the shard's bucket). ARGV: window ms (0: no bucket), total
-- per day, a member suffix unique to the caller. Returns 1 taken, 0 refused (nothing kept).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = 86400000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - day)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
if tonumber(ARGV[1]) > 0 then
  if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
end
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], day)
return 1
