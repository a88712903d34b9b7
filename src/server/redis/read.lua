-- Reads a channel's position and history in one step (see docs/redis.md).
-- KEYS[1] meta hash, KEYS[2] history stream.
-- ARGV: 1 '1' to create the channel if absent (a sub), 2 epoch to use if absent,
-- 3 meta TTL (s), 4 since epoch ('' for none), 5 first offset wanted (since + 1),
-- 6 limit, 7 'newest' to read the newest `limit` when there is no since.
-- Returns {epoch, top, {id, publication, id, publication, ...}} oldest first.
local epoch = redis.call('hget', KEYS[1], 'e')
local top = 0
if not epoch then
  if ARGV[1] ~= '1' then
    return {ARGV[2], 0, {}}
  end
  epoch = ARGV[2]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch, 'o', 0)
else
  top = tonumber(redis.call('hget', KEYS[1], 'o'))
end
if ARGV[1] == '1' then
  redis.call('expire', KEYS[1], ARGV[3])
end
local out = {}
local limit = tonumber(ARGV[6])
if limit <= 0 then
  return {epoch, top, out}
end
local entries = {}
if ARGV[4] ~= '' then
  if ARGV[4] == epoch and tonumber(ARGV[5]) <= top then
    entries = redis.call('xrange', KEYS[2], ARGV[5] .. '-0', '+', 'COUNT', limit)
  end
elseif ARGV[7] == 'newest' then
  local newest = redis.call('xrevrange', KEYS[2], '+', '-', 'COUNT', limit)
  for i = #newest, 1, -1 do
    entries[#entries + 1] = newest[i]
  end
end
for _, e in ipairs(entries) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2][2]
end
return {epoch, top, out}
