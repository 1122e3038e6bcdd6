// Builds hey, the benchmark's load client for explicit proxies (CONNECT per connection, then
// HTTP/1.1 or HTTP/2 inside the tunnel): wrk and h2load cannot go through a proxy.
// The require line of github.com/rakyll/hey is the pin; hey has no replace directives.
// golang.org/x/net is raised from hey's own (of 2018), whose HTTP/2 client had a few streams of
// long connections refused (GOAWAY INTERNAL_ERROR) where a current Go client has none.
module intercept-tools/hey

go 1.26.0

require (
	github.com/rakyll/hey v0.1.4 // indirect
	golang.org/x/net v0.63.0 // indirect
	golang.org/x/text v0.44.0 // indirect
)

tool github.com/rakyll/hey
