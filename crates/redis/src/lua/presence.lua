local gid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', 'p ' .. ARGV[1])
redis.call('PUBLISH', ARGV[3], gid .. ' p ' .. ARGV[1])
return 1
