-- The multipart upload of upload.lua, counting answers by HTTP status (for the overload benchmark).
-- Adds "statuses": {"200": n, "503": m, ...} to the WRK_JSON line.
dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/upload.lua")
local summary_done = done
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do parts[#parts + 1] = string.format('"%d": %d', status, count) end
  io.write('WRK_STATUSES {' .. table.concat(parts, ", ") .. '}\n')
  summary_done(summary, latency, requests)
end
