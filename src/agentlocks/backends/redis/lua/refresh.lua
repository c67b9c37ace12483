-- refresh.lua: keep a queued request alive and report its state.
--
-- KEYS: the four lock keys of _core.lua.
-- ARGV[1] the request "id|mode|capacity|ttl"
-- Returns:
--   {1, token, left}  the request was granted (its inbox message may have been missed);
--                     left = ms until its lease ends
--   {0, expiry}       still queued; its deadline is now ttl ms away; expiry = ms until the
--                     first holder's lease ends (-1: none)
--   {-1}              gone: its deadline passed or the server lost its state
-- Also hands the lock on if a holder's lease ran out since the last script ran: this is
-- how a crashed holder's lock reaches its waiters.

-- @core
-- @lib

local request = ARGV[1]
local id, _, _, ttl = parse_request(request)
if reap() then grant_head() end
if redis.call('ZSCORE', Q, request) then
  redis.call('ZADD', D, 'XX', NOW + ttl, request)
  persist()
  return {0, first_expiry()}
end
persist()
local member = find_holder(id)
if member then
  return {1, holder_token(member), tonumber(redis.call('ZSCORE', H, member)) - NOW}
end
return {-1}
