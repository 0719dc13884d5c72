if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local covered = tonumber(ARGV[2])
if covered <= tonumber(redis.call('GET', KEYS[3]) or '0') then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], covered)
redis.call('XTRIM', KEYS[4], 'MINID', (covered + 1) .. '-0')
return 1
