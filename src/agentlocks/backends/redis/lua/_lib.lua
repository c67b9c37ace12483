-- _lib.lua: the state model shared by every lock script, part 2 (the queue machinery).
--
-- Inserted at a lock script's "-- @lib" line, after _core.lua (whose locals it uses).

local INBOX = 'agentlocks:inbox:'

-- Tell a waiter's coordinator of its grant; answers how many connections heard it. Here a
-- PUBLISH to the coordinator's inbox (one server, or a Sentinel primary). The Redis Cluster
-- variant of each script (redis/_scripts.py, cluster_variant) replaces the @publish line:
-- SPUBLISH on the lock's own shard channel "agentlocks:inbox:{<tag>}:<coordinator id>",
-- which stays on the slot's shard (no broadcast to every node) and is counted there.
local function publish(id, token)
  return redis.call('PUBLISH', INBOX .. string.match(id, '^[^:]+'), id .. ' ' .. fmt(token)) -- @publish
end

-- The holder member of request id, or nil (a scan: only on rare paths).
local function find_holder(id)
  local prefix = id .. '|'
  for _, member in ipairs(redis.call('ZRANGE', H, 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then return member end
  end
  return nil
end

local function holder_token(member)
  return tonumber(string.match(member, '(%d+)$'))
end

-- Drop holders whose lease ran out and waiters whose deadline passed. True if any went.
local function reap()
  local gone = redis.call('ZREMRANGEBYSCORE', H, '-inf', now()) > 0
  local late = redis.call('ZRANGEBYSCORE', D, '-inf', NOW)
  if #late > 0 then
    for _, member in ipairs(late) do redis.call('ZREM', Q, member) end
    redis.call('ZREMRANGEBYSCORE', D, '-inf', NOW)
    gone = true
  end
  return gone
end

-- Could a request of this mode be held alongside the current holders?
local function admits(mode, cap)
  local n = redis.call('ZCARD', H)
  if n == 0 then return true end
  if mode == 'x' then return false end
  if cap > 0 then return n < cap end
  if n > 1 then return true end -- several holders: all shared
  return string.match(redis.call('ZRANGE', H, 0, 0)[1], '|(%a)|') ~= 'x'
end

-- Hand the lock to the head of the queue while the head is admissible (adjacent shared
-- requests are granted together), and tell each new holder's coordinator.
--
-- Dead waiters are skipped: PUBLISH answers how many connections received the grant, and
-- 0 means nobody listens on the waiter's inbox any more (its process died, or its inbox
-- connection dropped). That grant is taken back at once (its token is simply never used)
-- and the next waiter is served, so a dead waiter cannot hold the queue up for a lease.
-- Invariant (see redis/_waiting.py): a request is queued only while its coordinator's
-- inbox subscription is confirmed, and that subscription lasts as long as its connection,
-- so a live waiter is skipped only across a dropped inbox, and then it queues again
-- itself. (Needs the count to include every receiver: PUBLISH on one server; on a Redis
-- Cluster, SPUBLISH counts on the slot's master, where the waiter's SSUBSCRIBE is.)
local function grant_head()
  while true do
    local head = redis.call('ZRANGE', Q, 0, 0)[1]
    if not head then return end
    local id, mode, cap, ttl = parse_request(head)
    if id and not admits(mode, cap) then return end
    redis.call('ZREM', Q, head)
    redis.call('ZREM', D, head)
    if id then -- (a malformed member cannot happen unless edited by hand: dropped)
      local token = grant(id, mode, ttl)
      local heard = publish(id, token)
      if heard == 0 then
        redis.call('ZREM', H, id .. '|' .. mode .. '|' .. fmt(token)) -- nobody to hold it
      elseif mode == 'x' then
        return -- an exclusive holder admits nobody else
      end
    end
  end
end

-- Milliseconds until the first holder's lease runs out (-1 without holders): when a
-- waiter should look again in case that holder died.
local function first_expiry()
  local top = redis.call('ZRANGE', H, 0, 0, 'WITHSCORES')
  if top[2] then return tonumber(top[2]) - now() end
  return -1
end

-- Every key expires by itself once the last lease and the last queue deadline have passed;
-- an idle lock leaves only T behind, which expires too.
local function persist()
  local last = now()
  local top = redis.call('ZRANGE', H, -1, -1, 'WITHSCORES')
  if top[2] then last = math.max(last, tonumber(top[2])) end
  top = redis.call('ZRANGE', D, -1, -1, 'WITHSCORES')
  if top[2] then last = math.max(last, tonumber(top[2])) end
  if last > NOW then
    local at = fmt(last)
    redis.call('PEXPIREAT', H, at)
    redis.call('PEXPIREAT', Q, at)
    redis.call('PEXPIREAT', D, at)
  else
    redis.call('DEL', H, Q, D)
  end
end

-- (end of _lib.lua)
