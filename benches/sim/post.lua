-- wrk script: POST the JSON body read from the file named by the first script argument.
-- Usage: wrk -s post.lua URL -- BODY_FILE
function init(args)
  local f = assert(io.open(args[1], "r"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

-- Count non-2xx answers so the summary can show them.
local errors = 0
function response(status, headers, body)
  if status < 200 or status > 299 then errors = errors + 1 end
end
