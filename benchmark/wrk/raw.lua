-- POST /classify with the image as the raw body (Content-Type: image/jpeg). IMAGE: path of the photo;
-- URL_PATH: another server's route (default /classify).
local summary = dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/summary.lua")
local path = os.getenv("IMAGE") or "tests/data/cat.jpg"
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.path = os.getenv("URL_PATH") or "/classify"
wrk.headers["Content-Type"] = "image/jpeg"
wrk.body = file:read("*all")
file:close()
done = summary.done
