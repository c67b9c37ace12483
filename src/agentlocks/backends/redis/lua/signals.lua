-- signals.lua: signals to the holders of one lock (Backend.signal, watch_signals,
-- clear_signal). Rare: a signal is sent when a LangGraph run must make way for another.
--
-- KEYS[1..4] the lock's keys (h, q, d, t: see _core.lua); only t is used, to draw marks
-- KEYS[5]    s  HASH  kind -> the highest mark sent (same hash tag as the lock)
-- ARGV[1]    "send", "read" or "clear"
--
-- send  ARGV[2] kind, ARGV[3] ttl (ms) of the record, ARGV[4] a mark to reuse or "" for a
--       fresh one, ARGV[5] the namespace's signal channel, ARGV[6] the lock's tag.
--       Keeps the highest mark of the kind, makes the record live at least ttl more, and
--       publishes "<kind>:<tag> <mark>". Returns the mark (a string).
-- read  Returns {kind, mark, kind, mark, ...} (empty without a record).
-- clear ARGV[2] kind, ARGV[3] mark: drops the kind's field if it still holds that mark.
--       Returns 1 if dropped, else 0.
--
-- A fresh mark is next_token(): strictly greater than every token issued on this lock
-- before, and every token issued after it is greater still (it moves t forward, which only
-- ever has to grow). So a holder whose token is below the mark was granted before the
-- signal was sent: it is the one the signal is for.

-- @core

local S = KEYS[5]
local op = ARGV[1]
if op == 'read' then
  return redis.call('HGETALL', S)
end
if op == 'clear' then
  if redis.call('HGET', S, ARGV[2]) == ARGV[3] then
    return redis.call('HDEL', S, ARGV[2])
  end
  return 0
end
-- send
local kind, ttl = ARGV[2], tonumber(ARGV[3])
local mark
if ARGV[4] == '' then mark = next_token() else mark = tonumber(ARGV[4]) end
local old = tonumber(redis.call('HGET', S, kind) or '0')
if mark > old then redis.call('HSET', S, kind, fmt(mark)) end
if redis.call('PTTL', S) < ttl then redis.call('PEXPIRE', S, ttl) end
redis.call('PUBLISH', ARGV[5], kind .. ':' .. ARGV[6] .. ' ' .. fmt(mark))
return fmt(mark)
