-- kura: read a token's metadata (linearizable), spread over the tokens in a file.
-- Arguments: secret key, file of tokens (one per line).
local tokens = {}
local seq = 0

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. args[1]
  for line in io.lines(args[2]) do tokens[#tokens + 1] = line end
end

function request()
  seq = seq + 1
  return wrk.format("GET", "/v1/tokens/" .. tokens[(seq * 104729) % #tokens + 1])
end
