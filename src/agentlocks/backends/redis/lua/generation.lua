-- generation.lua: read, or publish (fenced), the generation of a registry.
--
-- Read:     KEYS[1] the registry's generation key (a STRING holding an integer)
--           ARGV: none
-- Publish:  KEYS[1] the registry lock's h key (_core.lua's KEYS[1]), KEYS[2] the
--           generation key (both share the lock's hash tag: one slot)
--           ARGV[1] the generation to publish, ARGV[2] the writer's holder member
--           "id|x|token"
-- Returns: the generation now published (0 if none); when publishing, -1 if the writer's
-- grant is gone (its lease ran out, or it was released): then nothing is written.
--
-- The fence is one atomic compare with the write: a writer whose lease was lost between
-- its check and its publish publishes nothing, so no stale writer can overwrite a newer
-- writer's generation. Never lowers it: publishing a smaller value leaves the larger one.
-- The key has no TTL on purpose: a generation that expired would read as 0 again, and
-- generations only grow (one small key per registry name).

if #ARGV == 0 then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end

local H, G = KEYS[1], KEYS[2]
local score = redis.call('ZSCORE', H, ARGV[2])
if not score then return -1 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if tonumber(score) <= now then
  -- Its lease ran out (not reaped yet): the grant is gone, and its release must say so.
  redis.call('ZREM', H, ARGV[2])
  return -1
end
local current = tonumber(redis.call('GET', G) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  current = wanted
  redis.call('SET', G, string.format('%.0f', current))
end
return current
