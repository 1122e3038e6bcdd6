// Command intercept-proxy-cni is CNI mode's plugin, chained after the plugin that attaches the
// pod. The node's container runtime runs it on the host, as root. It decides nothing about a
// pod: it hands each ADD and CHECK to the node agent (`intercept cni-node`, the chart's
// DaemonSet) over the Unix socket its configuration names, with the pod's network namespace as
// an open file descriptor, and prints the agent's answer. The agent reads the pod and installs
// its capture in that namespace.
//
// What it answers alone, so that a node whose agent is away still works where it safely can:
//   - DEL, GC and STATUS: nothing to do, whatever the configuration. The rules go with the
//     pod's namespace; removing them first would let a stopping workload out.
//   - VERSION, and a configuration of another CNI version (error 1);
//   - a sandbox that is not a Kubernetes pod (no K8S_POD_NAMESPACE and K8S_POD_NAME in
//     CNI_ARGS), or of a namespace in excludeNamespaces: the previous plugin's result. The
//     agent's own namespace is one, or its pods could never start while it is away.
//
// Any other ADD fails while the agent does not answer (error 11, try again later): the runtime
// makes the pod's network again later, and an intercepted pod never starts uncaptured. The agent
// is root: a socket of that name held by anyone else is not answered.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

const plugin = "intercept-proxy-cni"

// The CNI specification's error codes.
const (
	incompatibleVersion = 1
	invalidEnvironment  = 4
	decodingFailure     = 6
	invalidConfig       = 7
	tryAgainLater       = 11
)

// Results pass through unchanged: their format is the list's, whatever it is of these.
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// The agent's deadline for one call: reading the pod and installing its rules.
const agentTimeout = 60 * time.Second

// The variables the agent is given; CNI_PATH and the rest of the environment are the host's.
var forwarded = []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"}

type config struct {
	CNIVersion        string          `json:"cniVersion"`
	Socket            string          `json:"socket"`
	ExcludeNamespaces []string        `json:"excludeNamespaces"`
	PrevResult        json.RawMessage `json:"prevResult"`
}

// request is what the agent reads from the socket, after the namespace's descriptor.
type request struct {
	Env    map[string]string `json:"env"`
	Config string            `json:"config"`
}

// answer is the agent's: the plugin's exit status and what it prints.
type answer struct {
	Exit   int    `json:"exit"`
	Output string `json:"output"`
}

type cniError struct {
	Version string `json:"cniVersion"`
	Code    int    `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *cniError) Error() string { return e.Msg }

func fail(code int, msg string, cause error) *cniError {
	e := &cniError{Version: errorVersion, Code: code, Msg: plugin + ": " + msg}
	if cause != nil {
		e.Details = cause.Error()
	}
	return e
}

var latest = supportedVersions[len(supportedVersions)-1]

// errorVersion is the version errors are written in: the list's, once it is known to be one.
var errorVersion = latest

func main() {
	a, err := run(os.Getenv("CNI_COMMAND"), os.Stdin, os.Getenv)
	if err != nil {
		var e *cniError
		if !errors.As(err, &e) {
			e = fail(999, err.Error(), nil)
		}
		a = answer{Exit: 1, Output: encode(e)}
	}
	if a.Output != "" {
		fmt.Println(a.Output)
	}
	os.Exit(a.Exit)
}

func encode(value any) string {
	text, err := json.Marshal(value)
	if err != nil {
		panic(err) // maps and structs of strings: never
	}
	return string(text)
}

// run answers one invocation: what to print and the exit status, the agent's or its own.
func run(command string, stdin io.Reader, getenv func(string) string) (answer, error) {
	switch command {
	case "VERSION":
		return answer{Output: encode(map[string]any{"cniVersion": latest, "supportedVersions": supportedVersions})}, nil
	case "DEL", "GC", "STATUS":
		return answer{}, nil
	}
	text, err := io.ReadAll(stdin)
	if err != nil {
		return answer{}, fail(decodingFailure, "cannot read its configuration", err)
	}
	var cfg config
	if err := json.Unmarshal(text, &cfg); err != nil {
		return answer{}, fail(decodingFailure, "its configuration is not a JSON object", err)
	}
	if !slices.Contains(supportedVersions, cfg.CNIVersion) {
		return answer{}, fail(incompatibleVersion, fmt.Sprintf("CNI version %q is not one of %s", cfg.CNIVersion, strings.Join(supportedVersions, ", ")), nil)
	}
	errorVersion = cfg.CNIVersion
	if command != "ADD" && command != "CHECK" {
		return answer{}, fail(invalidEnvironment, fmt.Sprintf("CNI_COMMAND %q is not known", command), nil)
	}
	if len(cfg.PrevResult) == 0 {
		return answer{}, fail(invalidConfig, "it is chained: it needs the attaching plugin's prevResult", nil)
	}
	if passes(getenv("CNI_ARGS"), cfg.ExcludeNamespaces) {
		if command == "CHECK" {
			return answer{}, nil
		}
		return previous(cfg)
	}
	if cfg.Socket == "" {
		return answer{}, fail(invalidConfig, "its configuration names no node agent socket", nil)
	}
	return ask(cfg.Socket, text, getenv)
}

// passes: the sandbox is no Kubernetes pod (neither K8S_POD_NAMESPACE nor K8S_POD_NAME), or
// one of an excluded namespace. A CNI_ARGS the agent would refuse (one of the two, an item that
// is no KEY=VALUE) never passes: the agent names what is wrong with it.
func passes(args string, exclude []string) bool {
	pairs := map[string]string{}
	for _, item := range strings.Split(args, ";") {
		key, value, ok := strings.Cut(item, "=")
		if item != "" && !ok {
			return false
		}
		pairs[key] = value
	}
	namespace, hasNamespace := pairs["K8S_POD_NAMESPACE"]
	_, hasName := pairs["K8S_POD_NAME"]
	if hasNamespace != hasName {
		return false
	}
	return !hasNamespace || slices.Contains(exclude, namespace)
}

// previous is the ADD result of a pod left alone: the previous plugin's, in the list's version.
func previous(cfg config) (answer, error) {
	var result map[string]any
	if err := json.Unmarshal(cfg.PrevResult, &result); err != nil || result == nil {
		return answer{}, fail(decodingFailure, "its prevResult is not a JSON object", err)
	}
	result["cniVersion"] = cfg.CNIVersion
	return answer{Output: encode(result)}, nil
}

// ask hands the call to the agent: one byte carrying the namespace's descriptor, then the
// request, then the agent's answer until it closes.
func ask(socket string, config []byte, getenv func(string) string) (answer, error) {
	path := getenv("CNI_NETNS")
	if !strings.HasPrefix(path, "/") {
		return answer{}, fail(invalidEnvironment, fmt.Sprintf("CNI_NETNS %q is not a path", path), nil)
	}
	netns, err := os.Open(path)
	if err != nil {
		return answer{}, fail(invalidEnvironment, "cannot open CNI_NETNS", err)
	}
	defer netns.Close()
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return answer{}, fail(tryAgainLater, "the node agent does not answer at "+socket+": try again later", err)
	}
	defer conn.Close()
	unix := conn.(*net.UnixConn)
	uid, err := listener(unix)
	if err != nil {
		return answer{}, fail(tryAgainLater, "cannot tell who listens on "+socket, err)
	}
	if uid != 0 {
		return answer{}, fail(tryAgainLater, fmt.Sprintf("%s is not the node agent's (held by UID %d)", socket, uid), nil)
	}
	if err := unix.SetDeadline(time.Now().Add(agentTimeout)); err != nil {
		return answer{}, fail(tryAgainLater, "the node agent's socket", err)
	}
	env := map[string]string{}
	for _, name := range forwarded {
		env[name] = getenv(name)
	}
	body := encode(request{Env: env, Config: string(config)})
	if _, _, err := unix.WriteMsgUnix([]byte{0}, syscall.UnixRights(int(netns.Fd())), nil); err != nil {
		return answer{}, fail(tryAgainLater, "cannot hand the call to the node agent", err)
	}
	if _, err := unix.Write([]byte(body)); err != nil {
		return answer{}, fail(tryAgainLater, "cannot hand the call to the node agent", err)
	}
	if err := unix.CloseWrite(); err != nil {
		return answer{}, fail(tryAgainLater, "cannot hand the call to the node agent", err)
	}
	reply, err := io.ReadAll(unix)
	if err != nil {
		return answer{}, fail(tryAgainLater, "the node agent did not answer", err)
	}
	var a answer
	if err := json.Unmarshal(reply, &a); err != nil {
		return answer{}, fail(tryAgainLater, "the node agent's answer is not JSON", err)
	}
	return a, nil
}

// listener is the UID of the process that listens on the socket (its credentials when it
// listened).
func listener(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if credErr != nil {
		return -1, credErr
	}
	return int(cred.Uid), nil
}
