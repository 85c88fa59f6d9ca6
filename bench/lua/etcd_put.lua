-- etcd: put a new key per request with a value the size of kura's tokenize body,
-- through the JSON gateway. Arguments: auth token, first sequence number, the value
-- in base64.
local base, value
local seq = 0
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function init(args)
  wrk.headers["Authorization"] = args[1]
  wrk.headers["Content-Type"] = "application/json"
  base, value = tonumber(args[2]), args[3]
end

local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = 4
    if not b then k = 2 elseif not c then k = 3 end
    for j = 1, 4 do
      if j <= k then
        local idx = math.floor(n / 2 ^ (6 * (4 - j))) % 64
        out[#out + 1] = b64chars:sub(idx + 1, idx + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

function request()
  seq = seq + 1
  local key = b64(string.format("bench/%012d", base + seq))
  return wrk.format("POST", "/v3/kv/put", nil, '{"key":"' .. key .. '","value":"' .. value .. '"}')
end
