-- acquire.lua: grant a request now, or queue it, or refuse it.
--
-- KEYS: the four lock keys of _core.lua, then KEYS[5] n: STRING, the lock's name record
--       (for `agentlocks inspect`; same hash tag), kept as long as the last token.
-- ARGV[1] the request "id|mode|capacity|ttl" (its queue member)
-- ARGV[2] "wait|max_waiting|enqueue": wait 1 or 0; max_waiting -1 for none; enqueue 1 may
--         queue the request, 0 only probes (the caller's inbox is not subscribed yet)
-- ARGV[3] the name record "<len(namespace)>:<namespace>:<resource>" (redis/_names.py)
-- Returns:
--   {1, token}    granted now: holder member "id|mode|token", lease of ttl ms
--   {0, expiry}   queued with a deadline of ttl ms; expiry = ms until the first holder's
--                 lease ends (-1: none); the grant will arrive on the inbox
--   {-1}          busy and wait = 0 (nothing stored)
--   {-2, n}       n >= max_waiting requests already wait (nothing stored)
--   {-3}          would have to wait and enqueue = 0 (nothing stored)
-- Granting is FIFO: a request is granted now only if nobody waits before it.
-- Idempotent per request: repeating a call reports the request's current state.

-- @core

-- The name record lets `agentlocks inspect` find locks by name (SCAN): user keys never
-- appear in key names. One SET: it lives while the lock is used, and expires with T.
redis.call('SET', KEYS[5], ARGV[3], 'PX', TOKEN_KEEP_MS)

local request = ARGV[1]
local id, mode, cap, ttl = parse_request(request)

if redis.call('EXISTS', H, Q) == 0 then -- free and nobody queued: the fast path
  local token = grant(id, mode, ttl)
  redis.call('PEXPIRE', H, ttl)
  return {1, token}
end

-- @lib

local changed = reap()
if not changed and redis.call('ZCARD', H) == 0 then
  -- A free key with a queue: its head's grant went to nobody (a waiter that left without
  -- withdrawing, e.g. one of a coordinator closed mid-acquire). Serve the queue first:
  -- grant_head skips waiters nobody listens for, so the queue cannot stay stuck.
  changed = true
end
if changed then grant_head() end
-- A repeated call (a client retrying after a lost reply) reports what the first one did.
local member = find_holder(id)
if member or redis.call('ZSCORE', Q, request) then
  if changed then persist() end
  if member then return {1, holder_token(member)} end
  return {0, first_expiry()}
end

if redis.call('ZCARD', Q) == 0 and admits(mode, cap) then
  local token = grant(id, mode, ttl)
  persist()
  return {1, token}
end
if changed then persist() end
local wait, max_waiting, enqueue = string.match(ARGV[2], '^(%d)|(%-?%d+)|(%d)$')
if wait == '0' then return {-1} end
local waiting = redis.call('ZCARD', Q)
max_waiting = tonumber(max_waiting)
if max_waiting >= 0 and waiting >= max_waiting then return {-2, waiting} end
if enqueue == '0' then return {-3} end

local tail = redis.call('ZRANGE', Q, -1, -1, 'WITHSCORES')
local seq = 1
if tail[2] then seq = tonumber(tail[2]) + 1 end
redis.call('ZADD', Q, seq, request)
redis.call('ZADD', D, NOW + ttl, request)
persist()
return {0, first_expiry()}
