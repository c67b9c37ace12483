-- release.lua: end a grant, or withdraw a request, and hand the lock on.
--
-- KEYS: the four lock keys of _core.lua.
-- Release a grant:       ARGV[1] its holder member "id|mode|token"
-- Withdraw a request:    ARGV[1] its id, ARGV[2] its request "id|mode|capacity|ttl"
--   (after a cancellation or a failure: it may be queued, or granted by a hand-off that
--   raced the cancellation, or unknown; whichever it is ends here)
-- Returns: 1 a grant was released; 2 a queued request left; 0 unknown (already released,
--          expired, or never stored): nothing changed.
-- The next admissible waiters are granted in this same script (pushed hand-off).

-- @core

local result = 0
if #ARGV == 1 then
  result = redis.call('ZREM', H, ARGV[1])
  if redis.call('EXISTS', H, Q) == 0 then return result end -- nothing to hand on: fast path
end

-- @lib

if #ARGV == 2 then
  if redis.call('ZREM', Q, ARGV[2]) == 1 then
    redis.call('ZREM', D, ARGV[2])
    result = 2
  else
    local member = find_holder(ARGV[1])
    if member then result = redis.call('ZREM', H, member) end
  end
  if redis.call('EXISTS', H, Q) == 0 then return result end
end
reap()
grant_head()
persist()
return result
