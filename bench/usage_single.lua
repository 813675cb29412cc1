-- POST /v1/usage, one event per request, cycling through TAG_SETS tag sets and 3 dimensions.
-- The requests are built once in init(), so wrk spends no time per request building them.
local dimensions = {"requests", "storage_gb", "seats"}
local tag_sets = tonumber(os.getenv("BENCH_TAG_SETS") or "2500")
local requests = {}
local n = 0

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  for i = 0, tag_sets * #dimensions - 1 do
    local t = i % tag_sets
    local body = string.format(
      '{"dimension":"%s","quantity":%d,"tags":{"tenant":"t%04d","plan":"p%d"}}',
      dimensions[(i % #dimensions) + 1], (i % 7) + 1, t, t % 5)
    requests[#requests + 1] = wrk.format("POST", "/v1/usage", headers, body)
  end
  -- Each thread starts at a different place, so that the threads do not post in lockstep.
  n = math.random(#requests) - 1
end

function request()
  n = (n % #requests) + 1
  return requests[n]
end
