-- POST /v1/usage with {"events": [...]}: BENCH_BATCH events per request (default 1,000), across
-- BENCH_TAG_SETS tag sets (default 2,500) and 3 dimensions. A few distinct bodies are built once in init().
local dimensions = {"requests", "storage_gb", "seats"}
local tag_sets = tonumber(os.getenv("BENCH_TAG_SETS") or "2500")
local batch = tonumber(os.getenv("BENCH_BATCH") or "1000")
local bodies = 8
local requests = {}
local n = 0

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  local i = 0
  for b = 1, bodies do
    local events = {}
    for e = 1, batch do
      local t = i % tag_sets
      events[e] = string.format(
        '{"dimension":"%s","quantity":%d,"tags":{"tenant":"t%04d","plan":"p%d"}}',
        dimensions[(i % #dimensions) + 1], (i % 7) + 1, t, t % 5)
      i = i + 1
    end
    requests[b] = wrk.format("POST", "/v1/usage", headers, '{"events":[' .. table.concat(events, ",") .. ']}')
  end
  n = math.random(#requests) - 1
end

function request()
  n = (n % #requests) + 1
  return requests[n]
end
