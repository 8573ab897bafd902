-- wrk script: POST the JSON body read from the file named by the first script argument.
-- No response() hook: it would make wrk parse every answer in Lua and skew latency.
-- Usage: wrk -s post.lua URL -- BODY_FILE [API_KEY]
-- With API_KEY, every request carries `Authorization: Bearer API_KEY`.
function init(args)
  local f = assert(io.open(args[1], "r"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] then
    wrk.headers["Authorization"] = "Bearer " .. args[2]
  end
end
