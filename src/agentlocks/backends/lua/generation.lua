-- generation.lua: read or raise the published generation of a registry.
--
-- KEYS[1] the registry's generation key (a STRING holding an integer)
-- ARGV[1] the generation to publish, or "" to only read
-- ARGV[2] retention, ms: the key's TTL, refreshed by every read and every publish
-- Returns: the generation now published (0 if none). Never lowers it: publishing a
-- smaller value leaves the larger one in place.

local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted and wanted > current then
  current = wanted
  redis.call('SET', KEYS[1], string.format('%.0f', current), 'PX', ARGV[2])
elseif current > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return current
