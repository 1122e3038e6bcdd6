// No binary: Cilium's CRDs (ciliumnetworkpolicies among them) from the pinned module, which
// `intercept render cilium`'s output is validated against (tests/cilium).
module intercept-tools/cilium

go 1.26.0

require github.com/cilium/cilium v1.20.2
