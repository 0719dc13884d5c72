local follows = ARGV[8] or ''
if follows ~= '' and redis.call('GET', KEYS[2]) ~= follows then
  if redis.call('GET', KEYS[7]) == follows then return {0, 1} end
  return {0, 0}
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
end
local epoch = redis.call('GET', KEYS[2]) or ARGV[1]
redis.call('XADD', KEYS[3], seq .. '-0', 'u', ARGV[5])
local body = epoch .. ' ' .. seq .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. #ARGV[4] .. ' ' .. ARGV[4] .. ARGV[5]
local gid = redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'm', 'd ' .. body)
redis.call('PUBLISH', ARGV[7], gid .. ' d ' .. body)
return {seq, redis.call('XLEN', KEYS[3])}
