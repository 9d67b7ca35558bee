-- wrk script: POST a valid purchase, spreading user ids over many users (and so over every
-- partition), as a shop's traffic would. With BENCH_TOKEN set, each request carries it as a
-- bearer token (a caller allowed to buy for any user).
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

request = function()
  counter = counter + 1
  local body = string.format('{"username":"bench user","userId":"user-%d","price":19.99}', counter % 10007)
  return wrk.format(nil, nil, nil, body)
end
