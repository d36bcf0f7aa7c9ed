// Command kstatus prints what the kstatus library computes for one Kubernetes object.
//
// It reads a JSON object (as `kubectl get -o json` prints it) on standard input and writes
// one JSON line, {"status": "InProgress|Current|Failed|Terminating|...", "message": "..."},
// computed by sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute: the library that Flux,
// kpt and cli-utils decide with whether an applied object has reconciled.
//
// With -current (and optionally -in-progress and -failed) it also evaluates a Flux
// Kustomization `spec.healthCheckExprs` entry and adds {"healthCheckExprs": {"status": ...}}
// (or {"error": ...}), computed by Flux's own StatusEvaluator (fluxcd/pkg/runtime/cel, the
// package kustomize-controller evaluates healthCheckExprs with, RFC-0009).
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

	"github.com/fluxcd/pkg/apis/kustomize"
	fluxcel "github.com/fluxcd/pkg/runtime/cel"
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
		out.HealthCheckExprs = evaluate(u, &kustomize.HealthCheckExpressions{
			Current:    *current,
			InProgress: *inProgress,
			Failed:     *failed,
		})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing result: %v", err)
	}
}

// evaluate runs Flux's StatusEvaluator over the object, as kustomize-controller does for a
// kind listed in spec.healthCheckExprs.
func evaluate(u *unstructured.Unstructured, exprs *kustomize.HealthCheckExpressions) *celResult {
	evaluator, err := fluxcel.NewStatusEvaluator(exprs)
	if err != nil {
		return &celResult{Error: err.Error()}
	}
	res, err := evaluator.Evaluate(context.Background(), u)
	if err != nil {
		return &celResult{Error: err.Error()}
	}
	return &celResult{Status: res.Status.String()}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
