-- wrk script: POST a valid purchase, spreading user ids over many users (and so over every
-- partition), as a shop's traffic would.
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local body = string.format('{"username":"bench user","userId":"user-%d","price":19.99}', counter % 10007)
  return wrk.format(nil, nil, nil, body)
end
