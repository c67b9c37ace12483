-- heads.lua: compare and update one head record, fence included; or drop a resource's.
--
-- KEYS[1] hd  HASH  field -> "<expiry ms>|<token or empty>|<swapped at ms>|<head>"
--                   (the head last: it may hold any text)
-- KEYS[2] hx  ZSET  field -> expiry ms (server clock), to sweep expired fields
-- Both share the hash tag of the lock whose resource they sit beside (redis/_scripts.py).
-- ARGV[1] "swap" or "drop"
-- ARGV[2] field (swap)
-- ARGV[3] "a" (no precondition) or "=" .. expected head; an absent record satisfies any
--         expectation, "=" alone (expected absent) is satisfied by nothing else
-- ARGV[4] new head ("" removes the head, keeps the fence)
-- ARGV[5] fencing token, or "" for none
-- ARGV[6] ttl, ms
-- Returns (swap): {1 swapped | 0 conflict | -1 fenced, head before ("" if absent),
-- token before ("" if none), ms since the record was last swapped ("" if absent)}.
-- (drop): 1.
-- A field whose expiry passed counts as absent. Each swap deletes up to 16 expired fields,
-- and both keys live at least as long as their longest-lived field: nothing outlasts it.

if ARGV[1] == 'drop' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end

local HD, HX, FIELD = KEYS[1], KEYS[2], ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function fmt(n)
  if n == nil then return '' end
  return string.format('%.0f', n)
end

local gone = redis.call('ZRANGEBYSCORE', HX, '-inf', now, 'LIMIT', 0, 16)
if #gone > 0 then
  redis.call('HDEL', HD, unpack(gone))
  redis.call('ZREM', HX, unpack(gone))
end

local head, token, age = '', nil, nil
local record = redis.call('HGET', HD, FIELD)
if record then
  local expiry, stored, swapped, value = string.match(record, '^(%d+)|(%d*)|(%d+)|(.*)$')
  if expiry and tonumber(expiry) > now then
    head, token, age = value, tonumber(stored), now - tonumber(swapped)
  end
end

local mine = tonumber(ARGV[5])
if mine and token and token > mine then return {-1, head, fmt(token), fmt(age)} end
if ARGV[3] ~= 'a' and head ~= '' and string.sub(ARGV[3], 2) ~= head then
  return {0, head, fmt(token), fmt(age)}
end

local kept = token
if mine and (kept == nil or mine > kept) then kept = mine end
local ttl = tonumber(ARGV[6])
local expiry = now + ttl
redis.call('HSET', HD, FIELD, fmt(expiry) .. '|' .. fmt(kept) .. '|' .. fmt(now) .. '|' .. ARGV[4])
redis.call('ZADD', HX, expiry, FIELD)
for _, key in ipairs({HD, HX}) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return {1, head, fmt(token), fmt(age)}
