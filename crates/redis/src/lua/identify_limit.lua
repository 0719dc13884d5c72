-- A bot's session start limit (identify.rs), changing nothing. KEYS: starts. Returns
-- {starts of the last day, ms until the oldest of them is a day old (0: none)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = 86400000
local from = '(' .. (now - day)
local used = redis.call('ZCOUNT', KEYS[1], from, '+inf')
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local reset = 0
if oldest[2] then reset = tonumber(oldest[2]) + day - now end
return {used, reset}
