-- POST /classify as `curl -F image=@$IMAGE` does: one multipart field "image" (the seed's upload.lua).
-- IMAGE: path of the photo (default tests/data/cat.jpg); PATH_QUERY: optional "?top_k=5";
-- URL_PATH: another server's route (default /classify).
local summary = dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/summary.lua")
local path = os.getenv("IMAGE") or "tests/data/cat.jpg"
local file = assert(io.open(path, "rb"))
local image = file:read("*all")
file:close()
local boundary = "----torchrest-bench-7d3f9a"
wrk.method = "POST"
wrk.path = (os.getenv("URL_PATH") or "/classify") .. (os.getenv("PATH_QUERY") or "")
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="image"; filename="image.jpg"\r\n'
  .. "Content-Type: image/jpeg\r\n\r\n"
  .. image .. "\r\n--" .. boundary .. "--\r\n"
done = summary.done
