local epoch = redis.call('GET', KEYS[2])
local n = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if epoch then redis.call('SET', KEYS[6], epoch, 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[3], '0-0 x ' .. ARGV[1] .. ' ' .. ARGV[2])
return n
