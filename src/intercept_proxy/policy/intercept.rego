# intercept-proxy egress policy (Rego v1).
#
# input: Envoy's ext_authz CheckRequest in the OPA-Envoy shape
#   input.attributes.request.http.{method, host, path, scheme, headers}
#   input.attributes.tlsSession.sni
#   input.attributes.contextExtensions.intercept_transport   ("tls" or "plain", set per listener)
# data.intercept_policy: the validated policy file (`intercept policy compile FILE`).
#
# Result: data.intercept.decision = {"allow": bool, "rule": string, "reason": string};
# data.intercept.allow is the same boolean, and data.intercept.envoy_response the same decision
# as OPA-Envoy's output document (for its `path: intercept/allow` or `intercept/envoy_response`).
#
# Extension point: modules in package intercept.custom may define the sets `allow` and `deny` of
# {"rule": ..., "reason": ...} objects; they read the normalised request in data.intercept.request.
# A custom deny overrides every grant, whatever its shape (a malformed entry, or `deny` as a
# boolean, still denies); a custom allow must be well-formed and cannot override the request
# checks (invalid host, missing SNI, SNI/Host mismatch). Both engines this policy is tested on,
# regorus (the agent's) and OPA, accept the same custom modules and decide alike (docs/policy.md).
package intercept

cfg := data.intercept_policy

# Anything missing from the input, or not of the type Envoy sends, reads as empty, which no rule
# grants: unknown input is denied. The types are settled here, once: a built-in given a wrong type
# is undefined in OPA but an error in regorus, and both must judge such input alike.
_input := input if {
	is_object(input)
} else := {}

_attributes := _object_at(_input, "attributes")

http := _object_at(_object_at(_attributes, "request"), "http")

_object_at(x, key) := v if {
	v := x[key]
	is_object(v)
} else := {}

_string_at(x, key, fallback) := v if {
	v := x[key]
	is_string(v)
} else := fallback

default allow := false

allow := decision.allow

_judged := _deny(d) if {
	d := _first(denials)
} else := _allow(g) if {
	g := _first(grants)
} else := _deny(d) if {
	d := _first(explanations)
} else := _deny({
	"rule": "default_deny",
	"reason": sprintf("%s is not allowed by the policy (no rule matches it)", [request.target]),
})

# A person may allow what only lacks a grant, on the hosts the policy's `approvals` names: such a
# denial is a question the agent holds until someone answers it (authz/approvals.py). Never a
# denial of the request itself (a malformed host, an SNI mismatch), a custom deny or a GitHub
# write rule: nothing in `denials`. The decision carries the grant that would allow it (reads:
# allowed_domains; anything else: unrestricted_domains), which the agent acts on: a custom rule
# that happens to bear the same name asks nothing.
approval_rule := "approval_required"

askable_rules := {"default_deny", "method_not_allowed", "not_read_only", "port_not_allowed"}

decision := {"allow": false, "rule": approval_rule, "reason": reason, "grant": _grant} if {
	count(denials) == 0
	not _judged.allow
	_judged.rule in askable_rules
	_approvable
	reason := sprintf("%s; a person may allow it (approvals)", [_judged.reason])
} else := _judged

_approvals := _object_at(cfg, "approvals")

# "*": every host name, on the ports an entry without one means.
_approvable if {
	_approvals.any_host == true
	port in {80, 443}
}

_approvable if {
	some e in _approvals.hosts
	_entry_matches(e)
}

_grant := {"key": "allowed_domains", "entry": _grant_entry} if read_only

else := {"key": "unrestricted_domains", "entry": _grant_entry}

_grant_entry := host if port in {80, 443}

else := sprintf("%s:%d", [host, port])

# The code of a denial's body (docs/policy.md, Error codes).
error_code := "HITL_REQUIRED" if decision.grant

else := "POLICY_BLOCKED"

_allow(g) := {"allow": true, "rule": g.rule, "reason": g.reason}

_deny(d) := {"allow": false, "rule": d.rule, "reason": d.reason}

# For OPA-Envoy (plugins.envoy_ext_authz_grpc.path: intercept/envoy_response): the decision as its
# output document. A denial is answered as the agent answers it: 403, a JSON body that explains
# it, the decision id (Envoy's x-request-id) in a header; the decision goes to Envoy's dynamic
# metadata either way.
envoy_response := {
	"allowed": true,
	"response_headers_to_add": _decision_id_header,
	"dynamic_metadata": decision,
} if {
	decision.allow
} else := {
	"allowed": false,
	"http_status": 403,
	"headers": object.union({"content-type": "application/json"}, _decision_id_header),
	"body": json.marshal({"error": {
		"code": error_code,
		"rule": decision.rule,
		"message": decision.reason,
		"decision_id": object.get(_decision_id_header, "x-intercept-decision-id", ""),
	}}),
	"dynamic_metadata": decision,
}

_decision_id_header := {"x-intercept-decision-id": id} if {
	id := _headers["x-request-id"]
	is_string(id)
	id != ""
} else := {}

# The candidate with the lowest priority number, ties broken by rule name: deterministic.
_first(candidates) := c if {
	ordered := sort([[object.get(x, "priority", 50), x.rule, x.reason] | some x in candidates])
	[_, rule, reason] := ordered[0]
	c := {"rule": rule, "reason": reason}
}

# ---------------------------------------------------------------------------------------------
# The request, normalised. Host names: lower case, one trailing dot dropped, default port
# removed; never matched by substring.

request := {
	"method": method,
	"scheme": scheme,
	"tls": tls,
	"sni": sni,
	"host": host,
	"port": port,
	"path": path,
	"segments": _segments_or_null,
	"target": target,
}

# Methods are case-sensitive (RFC 9110): `get` is not GET, and goes upstream as `get`. It is
# judged as written: it is no read, and no write a grant names.
method := _string_at(http, "method", "")

scheme := lower(_string_at(http, "scheme", ""))

_raw_sni := _string_at(_object_at(_attributes, "tlsSession"), "sni", "")

sni := _strip_dot(lower(_raw_sni))

# Envoy reports a TLS session attribute on plain connections too, so TLS is told by the scheme,
# by the listener (the context extension the interceptor's configuration sets) or by an SNI.
tls if scheme == "https"

tls if _object_at(_attributes, "contextExtensions").intercept_transport == "tls"

tls if sni != ""

default tls := false

default_port := 443 if scheme == "https"

else := 443 if tls

else := 80

_raw_authority := _string_at(http, "host", "")

authority := lower(_raw_authority)

_authority_parts := split(authority, ":")

# "[v6]" and "[v6]:port" are IP literals; so is anything with more than one colon.
_ip_literal if startswith(authority, "[")

_ip_literal if count(_authority_parts) > 2

default host := ""

host := _strip_dot(_authority_parts[0]) if not _ip_literal

# 0 stands for an invalid port.
default port := 0

port := default_port if {
	not _ip_literal
	count(_authority_parts) == 1
}

port := to_number(_authority_parts[1]) if {
	not _ip_literal
	count(_authority_parts) == 2
	regex.match(`^[1-9][0-9]{0,4}$`, _authority_parts[1])
	to_number(_authority_parts[1]) < 65536
}

_strip_dot(name) := trim_suffix(name, ".")

# ASCII labels of letters, digits, '_' and '-' (not at either end), at most 253 characters,
# and not an IPv4 literal in any spelling (a last label that is a number: 1.2.3.4, 0x7f.1).
# Checked before lower-casing too: some non-ASCII letters lower-case to ASCII ones.
_ascii(s) if regex.match(`^[[:ascii:]]*$`, s)

valid_host if {
	_ascii(_raw_authority)
	_ascii(_raw_sni)
	regex.match(`^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$`, host)
	count(host) <= 253
	labels := split(host, ".")
	not regex.match(`^(0x[0-9a-f]*|[0-9]+)$`, labels[count(labels) - 1])
}

target := sprintf("%s %s:%d", [method, host, port]) if valid_host

else := sprintf("%s %q", [method, authority])

path := split(_string_at(http, "path", "/"), "?")[0]

query := substring(p, count(path) + 1, -1) if {
	p := _string_at(http, "path", "")
	count(p) > count(path)
} else := ""

# ---------------------------------------------------------------------------------------------
# Path normalisation (for rules that judge the path): percent-encoded dots decoded, duplicate
# slashes merged, dot segments resolved as RFC 3986 does. Encoded slashes and backslashes make
# the path unjudgeable; so does an absurd number of segments.

max_segments := 64

path_unjudgeable if regex.match(`(?i)%(2f|5c)|\\`, path)

path_unjudgeable if count(_raw_segments) > max_segments

_raw_segments := [s |
	some s in split(replace(replace(path, "%2e", "."), "%2E", "."), "/")
	s != ""
	s != "."
]

_steps := [_step(s) | some s in _raw_segments]

_step("..") := -1

_step(s) := 1 if s != ".."

_prefix := [sum(array.slice(_steps, 0, k + 1)) | some k, _ in _steps]

# The depth of the segment stack after each segment: a prefix sum clamped at the root.
_depth := [_clamped_depth(k) | some k, _ in _steps]

_clamped_depth(k) := _prefix[k] - min(array.concat([0], array.slice(_prefix, 0, k + 1)))

# A segment survives when the stack never drops below the depth at which it was pushed. Other
# percent-encodings are decoded as the upstream decodes them (`hell%6f` is `hello`); a segment
# with a malformed one is kept as it is.
segments := [_decoded(s) |
	some i, s in _raw_segments
	s != ".."
	every j in numbers.range(i, count(_raw_segments) - 1) {
		_depth[j] >= _depth[i]
	}
] if not path_unjudgeable

_decoded(s) := urlquery.decode(replace(s, "+", "%2B")) if {
	contains(s, "%")
	regex.match(`^([^%]|%[0-9A-Fa-f]{2})*$`, s)
} else := s

default _segments_or_null := null

_segments_or_null := segments

# ---------------------------------------------------------------------------------------------
# Denials: checks on the request itself, before any grant is considered.

_well_formed if {
	is_string(object.get(http, "method", null))
	is_string(object.get(http, "host", null))
	is_string(object.get(http, "path", null))
}

denials contains {"priority": 0, "rule": "invalid_request", "reason": reason} if {
	not _well_formed
	reason := "the request lacks a method, host or path"
}

denials contains {"priority": 1, "rule": "invalid_host", "reason": reason} if {
	not valid_host
	reason := sprintf("%q is not a valid host name (empty, IP literal, non-ASCII or malformed)", [authority])
}

denials contains {"priority": 1, "rule": "invalid_host", "reason": reason} if {
	valid_host
	port == 0
	reason := sprintf("%q has an invalid port", [authority])
}

denials contains {"priority": 2, "rule": "missing_sni", "reason": reason} if {
	tls
	sni == ""
	reason := sprintf("TLS connection without SNI cannot be identified (request for %q)", [authority])
}

# For TLS the SNI is the identity: a Host that differs is domain fronting.
denials contains {"priority": 3, "rule": "sni_mismatch", "reason": reason} if {
	sni != ""
	valid_host
	sni != host
	reason := sprintf("Host %q does not match the TLS server name %q", [host, sni])
}

# ---------------------------------------------------------------------------------------------
# Custom modules (package intercept.custom): `deny` and `allow`, in whatever shape a module gives
# them. Read through object.get, whose result OPA's type checker types `any`: a direct reference
# carries the type of the module's own rule, and OPA then rejects this module whenever that type
# does not fit one of the branches below (`deny if ...` is a boolean, `some d in deny` needs a
# collection). Every shape is judged here, at evaluation time, by OPA and regorus alike. (When a
# module defines no `deny`, the object is undefined, and so is _custom_deny: the default of
# object.get is never used.)

_custom_deny := object.get({"v": data.intercept.custom.deny}, "v", null)

_custom_allow := object.get({"v": data.intercept.custom.allow}, "v", null)

# A custom deny denies whatever its shape, because a mistake in a module meant to restrict must
# not let requests through: every entry of a set or an array, a non-empty object (a single
# decision, or a partial object), `true` (`deny if {...}`), a string, a number, null. Only
# `false`, an empty set, array or object, and an undefined `deny` deny nothing.
_custom_denials contains d if {
	_is_collection(_custom_deny)
	some d in _custom_deny
}

_custom_denials contains x if {
	x := _custom_deny
	not _is_collection(x)
	not x in {false, {}}
}

denials contains {"priority": 10, "rule": rule, "reason": reason} if {
	some d in _custom_denials
	rule := _field(d, "rule", "custom_deny")
	reason := _field(d, "reason", _custom_reason(d))
}

_is_collection(x) if is_set(x)

_is_collection(x) if is_array(x)

_field(d, key, fallback) := d[key] if {
	is_object(d)
	is_string(d[key])
} else := fallback

# Values are described, never printed with %v: OPA and regorus print numbers (`1e6`) and empty
# sets differently, and the reason must not depend on the engine.
_custom_reason(d) := sprintf("denied by a custom module: %s", [d]) if {
	is_string(d)
} else := sprintf("denied by a custom module (rule %s gives no reason)", [d.rule]) if {
	is_object(d)
	is_string(d.rule)
} else := sprintf("denied by a custom module (deny holds %v)", [d]) if {
	is_boolean(d)
} else := sprintf("denied by a custom module (deny holds %s)", [_a_value_of_type[type_name(d)]])

_a_value_of_type := {
	"null": "null",
	"number": "a number",
	"array": "an array",
	"set": "a set",
	"object": "an object with no rule",
}

# ---------------------------------------------------------------------------------------------
# Grants.

read_methods := {"GET", "HEAD"}

_headers := _object_at(http, "headers")

# A read sends nothing: no body (a length other than 0, or chunked) and no protocol upgrade (a
# WebSocket is a two-way channel opened with a GET).
read_only if {
	method in read_methods
	object.get(_headers, "content-length", "0") == "0"
	not _headers["transfer-encoding"]
	not _headers.upgrade
	object.get(http, "body", "") == ""
	object.get(http, "rawBody", "") == ""
}

write_methods := {"POST", "PUT", "PATCH", "DELETE"}

_entry_host_matches(e) if {
	not e.wildcard
	e.host == host
}

_entry_host_matches(e) if {
	e.wildcard
	endswith(host, concat("", [".", e.host]))
}

_entry_port_matches(e) if {
	e.port == null
	port in {80, 443}
}

_entry_port_matches(e) if e.port == port

_entry_matches(e) if {
	_entry_host_matches(e)
	_entry_port_matches(e)
}

grants contains {"rule": "unrestricted_domains", "reason": reason} if {
	valid_host
	some e in cfg.unrestricted_domains
	_entry_matches(e)
	reason := sprintf("%s: %s is in unrestricted_domains", [target, e.entry])
}

grants contains {"rule": "allowed_domains", "reason": reason} if {
	valid_host
	read_only
	some e in cfg.allowed_domains
	_entry_matches(e)
	reason := sprintf("%s: %s is in allowed_domains (reads)", [target, e.entry])
}

grants contains {"rule": "github_read", "reason": reason} if {
	github_read_request
	reason := sprintf("%s: GitHub read access is enabled", [target])
}

grants contains {"rule": "github_write", "reason": reason} if {
	_github_write_granted
	not github_admin_request
	reason := sprintf("%s: write to GitHub repository %s is allowed", [target, github_write_target])
}

grants contains {"rule": "github_admin", "reason": reason} if {
	_github_write_granted
	github_admin_request
	cfg.github_admin_access_enabled
	reason := sprintf(
		"%s: administration of GitHub repository %s is allowed (github_admin_access_enabled)",
		[target, github_write_target],
	)
}

grants contains {"rule": "aws", "reason": reason} if {
	cfg.aws_access_enabled
	valid_host
	port in {80, 443}
	[service, _] := _aws_service_region
	service in cfg.aws_allowed_services
	reason := sprintf("%s: AWS service %s is allowed", [target, service])
}

# A custom allow grants only with well-formed {"rule": ..., "reason": ...} entries of a set or an
# array: anything else (`allow if {...}`, strings, an entry without a reason) grants nothing.
grants contains {"priority": 60, "rule": g.rule, "reason": g.reason} if {
	valid_host
	_is_collection(_custom_allow)
	some g in _custom_allow
	is_object(g)
	is_string(g.rule)
	is_string(g.reason)
}

# ---------------------------------------------------------------------------------------------
# GitHub. Reads: GET/HEAD on its hosts, plus the git smart-HTTP fetch. Writes: the REST API under
# /repos/{owner}/{repo}, and the git smart-HTTP push, for allowed repositories only, and without
# repository administration unless github_admin_access_enabled. A write to a repository that is
# not allowed, or an administration request, is denied whatever other grant matches the host
# (allowed_domains, unrestricted_domains, a custom allow): only the github_* keys decide them.

github_read_hosts := {
	"github.com",
	"api.github.com",
	"raw.githubusercontent.com",
	"codeload.github.com",
	"objects.githubusercontent.com",
}

# Where the REST API writes to repositories (uploads.github.com: release assets).
github_api_hosts := {"api.github.com", "uploads.github.com"}

# The methods that change nothing on GitHub. Any other (`post`, `PROPPATCH`, ...) on a
# repository's path is judged as a write; only POST, PUT, PATCH and DELETE are granted.
github_safe_methods := {"GET", "HEAD", "OPTIONS"}

_github_host(name) if {
	name in github_read_hosts
	port in {80, 443}
}

_github_api_host if {
	host in github_api_hosts
	port in {80, 443}
}

_git_services := {v |
	some pair in split(query, "&")
	kv := split(pair, "=")
	count(kv) == 2
	lower(urlquery.decode(kv[0])) == "service"
	v := lower(urlquery.decode(kv[1]))
}

# The ref advertisement of git smart HTTP: anything but a fetch prepares a push.
git_receive_pack_discovery if {
	_git_repo_path.op == "refs"
	some v in _git_services
	v != "git-upload-pack"
}

# github.com/{owner}/{repo}[.git]/info/refs or .../git-upload-pack or .../git-receive-pack
_git_repo_path := {"owner": lower(s[0]), "repo": trim_suffix(lower(s[1]), ".git"), "op": op} if {
	host == "github.com"
	s := segments
	count(s) in {3, 4}
	op := _git_op([lower(x) | some x in array.slice(s, 2, count(s))])
}

_git_op(["info", "refs"]) := "refs"

_git_op(["git-upload-pack"]) := "upload-pack"

_git_op(["git-receive-pack"]) := "receive-pack"

github_read_request if {
	cfg.github_read_access_enabled
	valid_host
	_github_host(host)
	read_only
	not git_receive_pack_discovery
}

github_read_request if {
	cfg.github_read_access_enabled
	_github_host(host)
	method == "POST"
	_git_repo_path.op == "upload-pack"
}

# A write to a GitHub repository, or the first step of one: {"repo": "owner/name", "kind": ...}.
github_write := {"repo": concat("/", [lower(s[1]), lower(s[2])]), "kind": "api"} if {
	_github_api_host
	not method in github_safe_methods
	s := segments
	count(s) >= 3
	lower(s[0]) == "repos"
} else := {"repo": concat("/", [r.owner, r.repo]), "kind": "discovery"} if {
	_github_host(host)
	r := _git_repo_path
	git_receive_pack_discovery
} else := {"repo": concat("/", [r.owner, r.repo]), "kind": "push"} if {
	_github_host(host)
	r := _git_repo_path
	r.op == "receive-pack"
	not method in github_safe_methods
}

github_write_target := github_write.repo

github_repo_allowed(repo) if repo in cfg.github_allowed_repos

github_repo_allowed(repo) if split(repo, "/")[0] in cfg.github_allowed_users

# The writes the github_* keys grant, with their exact methods.
_github_write_granted if {
	github_repo_allowed(github_write_target)
	_github_write_method(github_write.kind)
}

_github_write_method("api") if method in write_methods

_github_write_method("discovery") if method in read_methods

_github_write_method("push") if method == "POST"

# Repository administration: what needs the repository's admin role on GitHub (its
# "Administration" permission), plus the repository's webhooks, secrets and variables: the path
# below /repos/{owner}/{repo}, lower-cased, matches one of these RE2 patterns (each segment after
# a slash). Reads of these endpoints are reads. The compiler of Envoy routes reads this list
# (policy/native.py): it is the one statement of these paths.
github_admin_paths := [
	``, # the repository itself: PATCH (settings, rename, visibility, archiving) and DELETE
	`/(?:autolinks|automated-security-fixes|collaborators|environments|forks|generate|hooks|immutable-releases|interaction-limits|invitations|keys|private-vulnerability-reporting|rulesets|teams|topics|transfer|vulnerability-alerts)(?:/[^/]+)*`,
	`/pages`,
	`/branches(?:/[^/]+)+/protection(?:/[^/]+)*`, # a branch name may hold slashes
	`/actions/(?:oidc|permissions|runners|secrets|variables)(?:/[^/]+)*`,
	`/actions/cache/(?:retention-limit|storage-limit)`,
	`/(?:agents|codespaces|dependabot)/secrets(?:/[^/]+)*`,
	`/agents/variables(?:/[^/]+)*`,
	`/code-quality/setup`,
	`/code-scanning/default-setup`,
	`/properties/values`,
	`/tags/protection(?:/[^/]+)*`,
	`/security-advisories/[^/]+/forks`,
]

_github_admin_pattern := concat("", ["^(?:", concat("|", github_admin_paths), ")$"])

github_admin_request if {
	github_write.kind == "api"
	rest := [concat("", ["/", lower(x)]) | some x in array.slice(segments, 3, count(segments))]
	regex.match(_github_admin_pattern, concat("", rest))
}

denials contains {"priority": 11, "rule": "invalid_path", "reason": reason} if {
	valid_host
	_github_host_or_api
	not method in github_safe_methods
	path_unjudgeable
	reason := sprintf("%s: the path has encoded slashes, backslashes or too many segments", [target])
}

_github_host_or_api if _github_host(host)

_github_host_or_api if _github_api_host

denials contains {"priority": 12, "rule": "github_write_not_allowed", "reason": reason} if {
	repo := github_write_target
	not github_repo_allowed(repo)
	reason := sprintf(
		"%s: write to GitHub repository %s is not allowed (add %s to github_allowed_repos or %s to github_allowed_users)",
		[target, repo, repo, split(repo, "/")[0]],
	)
}

denials contains {"priority": 13, "rule": "github_admin_not_allowed", "reason": reason} if {
	github_admin_request
	github_repo_allowed(github_write_target)
	not cfg.github_admin_access_enabled
	reason := sprintf(
		"%s: administration of GitHub repository %s (settings, webhooks, keys, collaborators, protection, secrets) is not allowed (set github_admin_access_enabled: true to allow it)",
		[target, github_write_target],
	)
}

# ---------------------------------------------------------------------------------------------
# AWS: {service}.amazonaws.com and {service}.{region}.amazonaws.com. The region must look like
# one (us-east-1, us-gov-west-1, ...): `{bucket}.s3.amazonaws.com` is somebody's S3 bucket.

# What a region looks like (read by the compiler of Envoy routes too, never copied).
aws_region := `[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]+`

_aws_service_region := [m[1], m[2]] if {
	pattern := concat("", [`^([a-z0-9-]+)(?:\.(`, aws_region, `))?\.amazonaws\.com$`])
	m := regex.find_all_string_submatch_n(pattern, host, 1)[0]
}

# ---------------------------------------------------------------------------------------------
# Explanations for denials that nearly matched a rule, so the reason says what to change.

explanations contains {"priority": 20, "rule": "method_not_allowed", "reason": reason} if {
	valid_host
	not method in read_methods
	some e in cfg.allowed_domains
	_entry_matches(e)
	reason := sprintf("%s: %s is in allowed_domains, which permits only GET and HEAD", [target, e.entry])
}

explanations contains {"priority": 20, "rule": "not_read_only", "reason": reason} if {
	valid_host
	method in read_methods
	not read_only
	some e in cfg.allowed_domains
	_entry_matches(e)
	reason := sprintf(
		"%s: %s is in allowed_domains, which permits reads only: no request body, no protocol upgrade",
		[target, e.entry],
	)
}

explanations contains {"priority": 22, "rule": "invalid_path", "reason": reason} if {
	valid_host
	_github_host_or_api
	path_unjudgeable
	reason := sprintf("%s: the path has encoded slashes, backslashes or too many segments", [target])
}

explanations contains {"priority": 23, "rule": "port_not_allowed", "reason": reason} if {
	valid_host
	some e in array.concat(cfg.allowed_domains, cfg.unrestricted_domains)
	_entry_host_matches(e)
	not _entry_port_matches(e)
	reason := sprintf("%s: port %d is not allowed for %s (list '%s:%d' to allow it)", [target, port, e.entry, host, port])
}
