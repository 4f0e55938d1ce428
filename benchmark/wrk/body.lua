-- POST a prepared body: the file BODY_FILE as the body, CONTENT_TYPE as its type, to URL_PATH
-- (benchmark/peers.py writes the JSON a LitServe client sends: {"image": "<base64 JPEG>"}).
local summary = dofile((os.getenv("WRK_LUA_DIR") or "benchmark/wrk") .. "/summary.lua")
local file = assert(io.open(assert(os.getenv("BODY_FILE"), "BODY_FILE is not set"), "rb"))
wrk.method = "POST"
wrk.path = os.getenv("URL_PATH") or "/classify"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"
wrk.body = file:read("*all")
file:close()
done = summary.done
