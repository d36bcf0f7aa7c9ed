// Command kstatus prints what the kstatus library computes for one Kubernetes object.
//
// It reads a JSON object (as `kubectl get -o json` prints it) on standard input and writes
// one JSON line, {"status": "InProgress|Current|Failed|Terminating|...", "message": "..."},
// computed by sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute: the library that Flux,
// kpt and cli-utils decide with whether an applied object has reconciled.
//
// With -current (and optionally -in-progress and -failed) it also evaluates a Flux
// Kustomization `spec.healthCheckExprs` entry and adds {"healthCheckExprs": {"status": ...}}
// (or {"error": ...}). The evaluation follows Flux's StatusEvaluator (fluxcd/pkg/runtime/cel,
// RFC-0009): an observedGeneration that differs from metadata.generation is InProgress;
// then inProgress, failed, current are evaluated in that order and the first true one
// wins; none true is InProgress. Expressions are parsed (not type-checked) in a cel-go
// environment with Flux's options, and the object's top-level fields are the variables.
// Importing Flux's package itself would pull controller-runtime and client-go into this
// build for three dozen lines, so they are restated here against the same cel-go release.
//
// The project's tests build it into the tool cache with hack/build-kstatus.sh.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type celResult struct {
	Status string `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
}

type result struct {
	Status           string     `json:"status"`
	Message          string     `json:"message"`
	HealthCheckExprs *celResult `json:"healthCheckExprs,omitempty"`
}

func main() {
	current := flag.String("current", "", "Flux healthCheckExprs `current` CEL expression")
	inProgress := flag.String("in-progress", "", "Flux healthCheckExprs `inProgress` CEL expression")
	failed := flag.String("failed", "", "Flux healthCheckExprs `failed` CEL expression")
	flag.Parse()

	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	u := &unstructured.Unstructured{}
	// The unstructured JSON decoder keeps integers as int64, as client-go hands objects
	// to kstatus in Flux (encoding/json would make them float64).
	if err := u.UnmarshalJSON(data); err != nil {
		fail("stdin is not a Kubernetes object: %v", err)
	}

	res, err := status.Compute(u)
	if err != nil {
		fail("kstatus: %v", err)
	}
	out := result{Status: res.Status.String(), Message: res.Message}
	if *current != "" {
		out.HealthCheckExprs = evaluate(u, []check{
			{*inProgress, status.InProgressStatus},
			{*failed, status.FailedStatus},
			{*current, status.CurrentStatus},
		})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing result: %v", err)
	}
}

type check struct {
	expr   string
	status status.Status
}

func evaluate(u *unstructured.Unstructured, checks []check) *celResult {
	obj := u.UnstructuredContent()
	observed, found, err := unstructured.NestedInt64(obj, "status", "observedGeneration")
	if err == nil && found && observed != u.GetGeneration() {
		return &celResult{Status: status.InProgressStatus.String()}
	}
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return &celResult{Error: err.Error()}
	}
	for _, c := range checks {
		if c.expr == "" {
			continue
		}
		ast, issues := env.Parse(c.expr)
		if issues != nil && issues.Err() != nil {
			return &celResult{Error: fmt.Sprintf("parsing %q: %v", c.expr, issues.Err())}
		}
		prog, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100))
		if err != nil {
			return &celResult{Error: fmt.Sprintf("program %q: %v", c.expr, err)}
		}
		val, _, err := prog.ContextEval(context.Background(), obj)
		if err != nil {
			return &celResult{Error: fmt.Sprintf("evaluating %q: %v", c.expr, err)}
		}
		truth, ok := val.(types.Bool)
		if !ok {
			return &celResult{Error: fmt.Sprintf("%q is not a boolean", c.expr)}
		}
		if truth {
			return &celResult{Status: c.status.String()}
		}
	}
	return &celResult{Status: status.InProgressStatus.String()}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
