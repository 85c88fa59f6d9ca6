-- etcd: a linearizable range read of one key, spread over the keys (base64, one per
-- line) in a file. Arguments: auth token, the file.
local keys = {}
local seq = 0

function init(args)
  wrk.headers["Authorization"] = args[1]
  wrk.headers["Content-Type"] = "application/json"
  for line in io.lines(args[2]) do keys[#keys + 1] = line end
end

function request()
  seq = seq + 1
  return wrk.format("POST", "/v3/kv/range", nil, '{"key":"' .. keys[(seq * 104729) % #keys + 1] .. '"}')
end
