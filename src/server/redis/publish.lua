-- Publishes one publication, atomically (see docs/redis.md).
-- KEYS[1] meta hash (e: epoch, o: top offset), KEYS[2] history stream,
-- KEYS[3] idempotency key (only read when ARGV[9] == '1').
-- ARGV: 1 publication head, 2 publication tail, 3 history size, 4 history TTL (ms),
-- 5 meta TTL (s), 6 epoch to use if the channel has none, 7 idempotency window (ms),
-- 8 PUB/SUB channel, 9 '1' if keyed.
-- Returns {epoch, offset, 1 if the key was seen (nothing published) else 0}.
if ARGV[9] == '1' then
  local seen = redis.call('get', KEYS[3])
  if seen then
    local sp = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, sp - 1), tonumber(string.sub(seen, sp + 1)), 1}
  end
end
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  -- A new epoch: whatever history survived belongs to the old one.
  epoch = ARGV[6]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('hincrby', KEYS[1], 'o', 1)
redis.call('expire', KEYS[1], ARGV[5])
local publication = ARGV[1] .. offset .. ARGV[2]
if tonumber(ARGV[3]) > 0 then
  redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'p', publication)
  redis.call('pexpire', KEYS[2], ARGV[4])
end
if ARGV[9] == '1' then
  redis.call('set', KEYS[3], epoch .. ' ' .. offset, 'PX', ARGV[7])
end
redis.call('publish', ARGV[8], epoch .. ' ' .. offset .. ' ' .. publication)
return {epoch, offset, 0}
