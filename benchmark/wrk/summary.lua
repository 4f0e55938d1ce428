-- Shared by the wrk scripts: print one JSON line (throughput, errors, latency percentiles) for the harness.
-- errors.status counts answers that were not 2xx/3xx.
local M = {}

function M.done(summary, latency, requests)
  local p = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do p[#p + 1] = string.format('"p%s": %.3f', q, latency:percentile(q) / 1000) end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "latency_ms": {%s, "mean": %.3f, "max": %.3f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, table.concat(p, ", "),
    latency.mean / 1000, latency.max / 1000))
end

return M
