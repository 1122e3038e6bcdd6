-- The gate in front of the policy's routes (intercept_proxy/policy/native.py): it marks the
-- requests that Envoy's routes may decide on their own, the canonical ones. Everything else (a
-- host name in another spelling than its canonical one, an SNI that is not the host, a read
-- that sends a body or upgrades, an unusual method or scheme, a path of more than 64 segments)
-- stays unmarked and goes to the agent, which applies the policy to whatever it is. An error
-- here leaves the request unmarked too. TLS, SCHEME and MARK (the header that marks) are set
-- above, per listener.

local METHODS = {GET = true, HEAD = true, POST = true, PUT = true, PATCH = true,
                 DELETE = true, OPTIONS = true}
local READS = {GET = true, HEAD = true}
local MAX_SEGMENTS = 64

-- Lower case, labels of letters, digits, '_' and '-' (not last), at most 63 characters, at
-- most 253 in all, the last label starting with a letter (never an IP address).
local function canonical(host)
  if #host == 0 or #host > 253 then
    return false
  end
  local last
  for label in (host .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 or not label:find("^[a-z0-9_][a-z0-9_-]*$")
        or label:find("%-$") then
      return false
    end
    last = label
  end
  return last:find("^[a-z]") ~= nil
end

local function sends_nothing(h, headers)
  local length = headers:get("content-length")
  if (length ~= nil and length ~= "0") or headers:get("transfer-encoding") ~= nil
      or headers:get("upgrade") ~= nil then
    return false
  end
  local body = h:body()
  return body == nil or body:length() == 0
end

local function is_canonical(h)
  local headers = h:headers()
  local method = headers:get(":method")
  if not METHODS[method] or headers:get(":scheme") ~= SCHEME then
    return false
  end
  local host = headers:get(":authority") or ""
  if not canonical(host) or (TLS and h:streamInfo():requestedServerName() ~= host) then
    return false
  end
  local _, slashes = (headers:get(":path") or ""):match("^[^?]*"):gsub("/", "")
  if slashes > MAX_SEGMENTS then
    return false
  end
  return not READS[method] or sends_nothing(h, headers)
end

function envoy_on_request(h)
  local ok, yes = pcall(is_canonical, h)
  if ok and yes then
    h:headers():add(MARK, "1")
    h:clearRouteCache()
    -- A route that denies answers once the upload is over: HTTP/2 clients such as curl take an
    -- answer that overtakes their upload (and Envoy's reset after it) for a stream error.
    if h:metadata():get("drain") then
      h:body()
    end
  end
end
