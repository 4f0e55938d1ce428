-- statuses.lua, and the 200s of each second (for the overload benchmark's goodput over time).
-- Adds WRK_SERIES {"<unix second>": n} beside statuses.lua's WRK_STATUSES.
dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/statuses.lua")
local statuses_setup, statuses_init, statuses_response, statuses_done = setup, init, response, done
local threads = {}

function setup(thread)
  statuses_setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses_init(args)
  seconds = {}
end

function response(status, headers, body)
  statuses_response(status, headers, body)
  if status == 200 then
    local now = os.time()
    seconds[now] = (seconds[now] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for second, count in pairs(thread:get("seconds")) do
      total[second] = (total[second] or 0) + count
    end
  end
  local parts = {}
  for second, count in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', second, count) end
  io.write("WRK_SERIES {" .. table.concat(parts, ", ") .. "}\n")
  statuses_done(summary, latency, requests)
end
