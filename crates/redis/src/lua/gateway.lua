if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
-- More than 3 dispatches: the log is trimmed once, at the end (one XTRIM costs less than
-- MAXLEN in every XADD); fewer: in their XADDs. MAXLEN ~ either way.
if (#ARGV - 3) / 3 > 3 then
  for i = 4, #ARGV, 3 do
    redis.pcall('XADD', KEYS[2], ARGV[i] .. '-0', 't', ARGV[i + 2], 'g', ARGV[i + 1])
  end
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[2])
else
  for i = 4, #ARGV, 3 do
    redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-0', 't', ARGV[i + 2], 'g', ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
