-- renew.lua: extend a held lease.
--
-- KEYS: the four lock keys of _core.lua.
-- ARGV[1] holder member "id|mode|token"    ARGV[2] lease TTL, ms
-- Returns: 1 renewed (the lease now ends ARGV[2] ms from now); 0 the grant is gone (its
-- lease ran out or its record was deleted): the holder must treat its lease as lost.
-- An expired lease is never revived, even if nobody else took the lock yet.

-- @core
-- @lib

local member, ttl = ARGV[1], tonumber(ARGV[2])
if reap() then grant_head() end
local result = 0
if redis.call('ZSCORE', H, member) then
  redis.call('ZADD', H, 'XX', NOW + ttl, member)
  result = 1
end
persist()
return result
