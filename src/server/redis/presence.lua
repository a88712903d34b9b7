-- A channel's presence, atomically (see docs/redis.md).
-- KEYS[1] hash: client id -> member JSON; KEYS[2] sorted set: client id scored by the
-- time its entry expires (ms, Redis's clock, so nodes' clocks do not matter).
-- ARGV: 1 mode ('add', 'remove', 'refresh' or 'read'), 2 expiry (ms), 3 PUB/SUB channel,
-- then: add: 4 client, 5 member (publishes '@join CLIENT MEMBER');
--       remove: 4 client (publishes '@leave CLIENT MEMBER' if it was there);
--       refresh: 4, 5, ... client, member pairs (re-added with a new expiry, no push);
--       read: nothing more (returns every member's JSON).
-- Every mode first drops the entries that have expired (their node stopped refreshing
-- them: it died) and publishes a leave for each, so each leave goes out once.
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for _, c in ipairs(expired) do
  local m = redis.call('hget', KEYS[1], c)
  if m then
    redis.call('hdel', KEYS[1], c)
    redis.call('publish', ARGV[3], '@leave ' .. c .. ' ' .. m)
  end
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
local mode = ARGV[1]
if mode == 'add' or mode == 'refresh' then
  for i = 4, #ARGV - 1, 2 do
    redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('zadd', KEYS[2], now + ttl, ARGV[i])
  end
  -- The keys outlive their latest entry, and go with it when every node is gone.
  redis.call('pexpire', KEYS[1], ttl)
  redis.call('pexpire', KEYS[2], ttl)
  if mode == 'add' then
    redis.call('publish', ARGV[3], '@join ' .. ARGV[4] .. ' ' .. ARGV[5])
  end
  return {}
elseif mode == 'remove' then
  local m = redis.call('hget', KEYS[1], ARGV[4])
  if m then
    redis.call('hdel', KEYS[1], ARGV[4])
    redis.call('zrem', KEYS[2], ARGV[4])
    redis.call('publish', ARGV[3], '@leave ' .. ARGV[4] .. ' ' .. m)
  end
  return {}
end
return redis.call('hvals', KEYS[1])
