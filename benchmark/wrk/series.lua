-- The multipart upload of upload.lua, counting answers by HTTP status, and the 200s of each second (for the
-- overload benchmark's goodput over time). Adds WRK_STATUSES {"200": n, ...} and WRK_SERIES {"<unix second>": n}.
dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/upload.lua")
local summary_done = done
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  seconds = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local now = os.time()
    seconds[now] = (seconds[now] or 0) + 1
  end
end

local function merged(name)
  local total = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get(name)) do
      total[key] = (total[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', key, count) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  io.write("WRK_STATUSES " .. merged("statuses") .. "\n")
  io.write("WRK_SERIES " .. merged("seconds") .. "\n")
  summary_done(summary, latency, requests)
end
