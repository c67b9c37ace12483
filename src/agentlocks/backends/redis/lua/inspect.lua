-- inspect.lua: the holders and the queue length of a lock. Read-only.
--
-- KEYS: the four lock keys of _core.lua.
-- ARGV: none
-- Returns: {waiting, token1, shared1, age_us1, token2, shared2, age_us2, ...}: the number of
-- live queued requests, then one triple per live holder (shared: 1 or 0; age in µs since
-- its grant, read off its token, which is the grant's server time in µs or just above).
-- Entries whose lease or deadline ran out are not counted.

-- @core
-- @lib

local out = {redis.call('ZCOUNT', D, '(' .. fmt(now()), '+inf')}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', H, '(' .. fmt(NOW), '+inf')) do
  local token = holder_token(member)
  out[#out + 1] = token
  out[#out + 1] = (string.match(member, '|(%a)|') == 'x') and 0 or 1
  out[#out + 1] = math.max(NOW_US - token, 0)
end
return out
