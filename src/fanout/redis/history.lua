-- chat4all-gateway: per-user notification history (issue 10), one atomic step per call.
--
-- The gateway loads this script (SCRIPT LOAD) and calls it for every publish API request and
-- every history read; backends that publish to Redis directly call it the same way instead of
-- PUBLISH, so that what they publish is recorded and recoverable too (docs/operations.md).
--
-- Keys of user U (prefix HISTORY_KEY_PREFIX, "history:" by default):
--   <prefix>{U}:s  a Stream of the recorded notifications, entry id "<offset>-1", field "n"
--   <prefix>{U}:m  a Hash: "b" the epoch's base, "t" the last offset given out
-- Both expire HISTORY_TTL after the last call that touched them.
--
-- publish: EVALSHA sha 1+2n <idempotency key or ''> <stream_1> <meta_1> ... <stream_n> <meta_n>
--          publish <payload> <HISTORY_SIZE> <HISTORY_TTL ms> <check 0|1> <channel_1> ... <channel_n>
--   For each user: next offset, "offset" and "epoch" spliced into the JSON text right after its
--   "{" (nothing else re-encoded), XADD with exact MAXLEN trimming, PUBLISH on the channel.
--   check=1 (direct publishers): refuse a payload that is not a JSON object or already has
--   "offset" or "epoch", and add "type":"notification" / "timestamp":<ms> when absent, as the
--   gateway does; the gateway passes 0 (it has done all of that already).
--   With an idempotency key, the first call stores its result there for HISTORY_TTL and a later
--   call with the same key returns it without recording or publishing anything.
--   Returns {receivers, refused channels, first refusal, repeated 0|1}.
--
-- read:    EVALSHA sha 2n <stream_1> <meta_1> ... read <HISTORY_TTL ms> <max bytes>
--          <since_1 or ''> <epoch_1> ... <since_n or ''> <epoch_n>
--   Returns, per user, {epoch, top offset, offset, text, offset, text, ...}: the entries after
--   since, oldest first, when the epoch is the one given and since is below the top, stopping
--   before max bytes are exceeded. The gateway decides from them whether recovery is possible.
--
-- The epoch is "<base>-<replid>": the base is made from TIME when the user's history is created
-- (absent: never written, expired or flushed); the replid is the first 12 hex digits of this
-- master's replication id, which a restarted master and a promoted replica change. So the epoch
-- changes whenever the history may have been lost, and never otherwise.

local mode = ARGV[1]

local function replid()
  local info = redis.call('INFO', 'replication')
  return string.sub(string.match(info, 'master_replid:(%x+)'), 1, 12)
end

-- The user's history (epoch base, top offset), created empty when absent.
local function open(stream, meta, ttl)
  local m = redis.call('HMGET', meta, 'b', 't')
  if m[1] then
    return m[1], tonumber(m[2])
  end
  local t = redis.call('TIME')
  local base = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
  -- A stream without its hash is a leftover: never serve it under a new epoch.
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'b', base, 't', 0)
  redis.call('PEXPIRE', meta, ttl)
  return base, 0
end

-- `fields` ("k":v pairs joined by commas) right after the opening brace; the rest byte for byte.
local function insert_after_brace(text, fields)
  local brace = string.find(text, '{', 1, true)
  local rest = string.sub(text, brace + 1)
  local sep = ','
  if string.match(rest, '^%s*}') then
    sep = ''
  end
  return string.sub(text, 1, brace) .. fields .. sep .. rest
end

-- "offset" and "epoch" right after the opening brace.
local function splice(text, offset, epoch)
  return insert_after_brace(text, '"offset":' .. string.format('%d', offset) .. ',"epoch":"' .. epoch .. '"')
end

-- For direct publishers: the gateway's checks and normalisation.
local function normalize(text)
  local ok, obj = pcall(cjson.decode, text)
  if not ok or type(obj) ~= 'table' or not string.match(text, '^%s*{') then
    return nil, 'payload is not a JSON object'
  end
  if obj.offset ~= nil or obj.epoch ~= nil then
    return nil, 'payload already has "offset" or "epoch"'
  end
  local add = {}
  if obj.type == nil then
    add[#add + 1] = '"type":"notification"'
  end
  if obj.timestamp == nil then
    local t = redis.call('TIME')
    add[#add + 1] = string.format('"timestamp":%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  end
  if #add == 0 then
    return text
  end
  return insert_after_brace(text, table.concat(add, ','))
end

if mode == 'publish' then
  local idem = KEYS[1]
  local size, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
  if idem ~= '' then
    local prev = redis.call('GET', idem)
    if prev then
      local r, f = string.match(prev, '^(%d+) (%d+)$')
      return {tonumber(r), tonumber(f), '', 1}
    end
  end
  local payload = ARGV[2]
  if ARGV[5] == '1' then
    local why
    payload, why = normalize(payload)
    if not payload then
      return redis.error_reply(why)
    end
  end
  local rid = replid()
  local receivers, refused, first = 0, 0, ''
  for i = 1, (#KEYS - 1) / 2 do
    local stream, meta, channel = KEYS[2 * i], KEYS[2 * i + 1], ARGV[5 + i]
    -- The offset is taken before anything else is written: a write refused half-way leaves a
    -- hole (recovery across it is refused), never an offset given out twice.
    local ok, r = pcall(function()
      local base, top = open(stream, meta, ttl)
      top = top + 1
      redis.call('HSET', meta, 't', top)
      redis.call('PEXPIRE', meta, ttl)
      local text = splice(payload, top, base .. '-' .. rid)
      redis.call('XADD', stream, 'MAXLEN', size, string.format('%d-1', top), 'n', text)
      redis.call('PEXPIRE', stream, ttl)
      return redis.call('PUBLISH', channel, text)
    end)
    if ok then
      receivers = receivers + r
    else
      refused = refused + 1
      if first == '' then
        first = type(r) == 'table' and r.err or tostring(r)
      end
    end
  end
  if idem ~= '' then
    redis.call('SET', idem, string.format('%d %d', receivers, refused), 'PX', ttl)
  end
  return {receivers, refused, first, 0}
elseif mode == 'read' then
  local ttl, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
  local rid = replid()
  local out = {}
  for i = 1, #KEYS / 2 do
    local stream, meta = KEYS[2 * i - 1], KEYS[2 * i]
    local since, want = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
    local base, top = open(stream, meta, ttl)
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', stream, ttl)
    local epoch = base .. '-' .. rid
    local user = {epoch, top}
    since = tonumber(since)
    if since and want == epoch and since < top then
      local entries = redis.call('XRANGE', stream, string.format('%d-0', since + 1), '+', 'COUNT', top - since)
      local bytes = 0
      for _, e in ipairs(entries) do
        local text = e[2][2]
        bytes = bytes + #text
        if bytes > cap then
          break
        end
        user[#user + 1] = tonumber(string.match(e[1], '^(%d+)'))
        user[#user + 1] = text
      end
    end
    out[i] = user
  end
  return out
end
return redis.error_reply('unknown mode ' .. tostring(mode))
