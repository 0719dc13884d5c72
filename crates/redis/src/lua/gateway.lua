if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 3 do
  redis.pcall('XADD', KEYS[2], ARGV[i] .. '-0', 't', ARGV[i + 2], 'g', ARGV[i + 1])
end
-- Trimmed once per call, not per XADD (MAXLEN ~ either way).
redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
