-- kura: tokenize a new card on file per request, as kura-bench's `tokenize` does.
-- Arguments: secret key, first sequence number, and the JSON body cut around the
-- card number and the member id (made by kura-bench from the SDK's request type).
local key, base, head, mid, tail
local seq = 0

function init(args)
  key, base, head, mid, tail = args[1], tonumber(args[2]), args[3], args[4], args[5]
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Content-Type"] = "application/json"
end

-- The Luhn check digit of a string of digits.
local function luhn(body)
  local sum, double = 0, true
  for i = #body, 1, -1 do
    local d = body:byte(i) - 48
    if double then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    double = not double
  end
  return string.char(48 + (10 - sum % 10) % 10)
end

function request()
  seq = seq + 1
  local n = base + seq
  local digits = string.format("424242%09d", n % 1000000000)
  -- A letter splits the number: 12 or more digits passing Luhn would be refused as a
  -- card number in the wrong field.
  local member = string.format("wrk-%06ds%06d-", math.floor(n / 1000000), n % 1000000)
  member = member .. string.rep("x", 64 - #member)
  return wrk.format("POST", "/v1/tokens", nil, head .. digits .. luhn(digits) .. mid .. member .. tail)
end
