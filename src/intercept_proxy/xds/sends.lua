-- Enabled on the routes that decide a read only when it sends nothing, for HTTP/2 and HTTP/3
-- (an HTTP/1.1 read that sends something says so in its headers, and the routes look there): a
-- body comes without a length. Once the request is over, a read that sent something is marked
-- and routed again, to the agent. SENT (the header that marks) is set above.

function envoy_on_request(h)
  local body = h:body()
  if body ~= nil and body:length() > 0 then
    h:headers():replace(SENT, "1")
    h:clearRouteCache()
  end
end
