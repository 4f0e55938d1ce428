-- POST /v2/models/$MODEL/infer with the binary tensor data extension: a JSON header, then a BYTES
-- tensor of $IMAGES_PER_REQUEST copies of $IMAGE (each a 4-byte little-endian length + the bytes).
local summary = dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/summary.lua")
local path = os.getenv("IMAGE") or "tests/data/cat.jpg"
local count = tonumber(os.getenv("IMAGES_PER_REQUEST") or "1")
local model = os.getenv("MODEL") or "efficientnet_lite0"
local file = assert(io.open(path, "rb"))
local image = file:read("*all")
file:close()

local function le32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end

local element = le32(#image) .. image
local data = string.rep(element, count)
local header = string.format(
  '{"inputs":[{"name":"image","datatype":"BYTES","shape":[%d],"parameters":{"binary_data_size":%d}}],'
    .. '"outputs":[{"name":"labels","parameters":{"binary_data":true}},{"name":"scores","parameters":{"binary_data":true}}]}',
  count, #data)
wrk.method = "POST"
wrk.path = "/v2/models/" .. model .. "/infer"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = tostring(#header)
wrk.body = header .. data
done = summary.done
