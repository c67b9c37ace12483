-- verify.lua: is a grant still held? Read-only.
--
-- KEYS: the four lock keys of _core.lua.
-- ARGV[1] holder member "id|mode|token"
-- Returns: 1 while the grant is held and its lease has not run out; 0 otherwise.

-- @core

local score = redis.call('ZSCORE', H, ARGV[1])
if score and tonumber(score) > now() then return 1 end
return 0
