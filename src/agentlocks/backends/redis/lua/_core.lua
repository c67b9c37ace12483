-- _core.lua: the state model shared by every lock script, part 1 (what fast paths need).
--
-- Not a script of its own: the backend puts this file where a lock script (acquire,
-- release, renew, refresh, verify, inspect) has its "-- @core" line, and _lib.lua where it
-- has its "-- @lib" line, before loading it; so every script reads and writes the lock's
-- state the same way. Fast paths run between the two, before the queue machinery of
-- _lib.lua is even defined (each definition costs server time on every call).
-- Needs Redis >= 6.2 (SET ... GET).
--
-- KEYS (identical for every lock script; all four share one hash tag, so each script
-- touches a single cluster slot):
--   KEYS[1] h  ZSET    holder "id|mode|token"         -> lease expiry (ms, server clock)
--   KEYS[2] q  ZSET    request "id|mode|capacity|ttl" -> arrival number (FIFO order)
--   KEYS[3] d  ZSET    request "id|mode|capacity|ttl" -> queue deadline (ms, server clock)
--   KEYS[4] t  STRING  the last token issued on this lock (outlives the rest; next_token)
-- mode is x (exclusive) or s (shared); capacity is 0 unless the request is a semaphore
-- slot; ttl is the lease TTL in ms, also the queue deadline's.
--
-- A record is its member: the requesting coordinator can rebuild every member it owns,
-- so no lookup table is needed and an uncontended acquire writes one member. A request id
-- is "<coordinator id>:<n>"; a grant to a queued request is announced on the pub/sub
-- channel "agentlocks:inbox:<coordinator id>" as "<request id> <token>". Time is the
-- server's (TIME), read at most once per script: no client clock is trusted.

local H, Q, D, T = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- How long the last token outlives the lock's other state. While it lives, tokens keep
-- growing even if the server clock steps back; after it, only a step back larger than
-- this could repeat a token (tokens are microsecond timestamps).
local TOKEN_KEEP_MS = '600000'

local NOW_US, NOW -- server time in µs and ms, read on first use
local function now()
  if not NOW then
    local clock = redis.call('TIME')
    NOW_US = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
    NOW = math.floor(NOW_US / 1000)
  end
  return NOW
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- "id|mode|capacity|ttl" -> id, mode, capacity, ttl
local function parse_request(member)
  local id, mode, cap, ttl = string.match(member, '^([^|]+)|(%a)|(%d+)|(%d+)$')
  return id, mode, tonumber(cap), tonumber(ttl)
end

-- Strictly greater than every token issued on this lock: max(now in µs, last + 1).
local function next_token()
  now()
  local last = redis.call('SET', T, fmt(NOW_US), 'PX', TOKEN_KEEP_MS, 'GET')
  if last and tonumber(last) >= NOW_US then
    local token = tonumber(last) + 1
    redis.call('SET', T, fmt(token), 'PX', TOKEN_KEEP_MS)
    return token
  end
  return NOW_US
end

local function grant(id, mode, ttl)
  local token = next_token()
  redis.call('ZADD', H, NOW + ttl, id .. '|' .. mode .. '|' .. fmt(token))
  return token
end

-- (end of _core.lua)
