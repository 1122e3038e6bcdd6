// No binary: cert-manager's controller is a module of its own that the module proxy does not
// serve. Its CRDs (deploy/crds of the pinned module) let the API server store the chart's
// Certificate; tests stand in for the controller by writing the Secret it would issue.
module intercept-tools/cert-manager

go 1.26.0

require github.com/cert-manager/cert-manager v1.21.2
