// Command kstatus prints what the kstatus library computes for one Kubernetes object.
//
// It reads a JSON object (as `kubectl get -o json` prints it) on standard input and
// writes one JSON line: {"status": "InProgress|Current|Failed|Terminating|NotFound|Unknown",
// "message": "..."}, computed by sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the
// library that Flux, kpt and cli-utils' own `kapply` use to decide whether an applied
// object has reconciled.
//
// With -current (and optionally -in-progress and -failed) it also evaluates Flux
// Kustomization `spec.healthCheckExprs` with Flux's own evaluator
// (github.com/fluxcd/pkg/runtime/cel), and adds {"healthCheckExprs": {"status": ...,
// "error": ...}}, so a documented recipe is tested by the code that runs it in Flux.
//
// The project's tests build this into the tool cache with hack/build-kstatus.sh.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	fluxcel "github.com/fluxcd/pkg/runtime/cel"
	"github.com/fluxcd/pkg/apis/kustomize"
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
	obj := map[string]any{}
	if err := json.Unmarshal(data, &obj); err != nil {
		fail("stdin is not a JSON object: %v", err)
	}
	u := &unstructured.Unstructured{Object: obj}

	res, err := status.Compute(u)
	if err != nil {
		fail("kstatus: %v", err)
	}
	out := result{Status: res.Status.String(), Message: res.Message}

	if *current != "" {
		out.HealthCheckExprs = evaluate(u, kustomize.HealthCheckExpressions{
			Current:    *current,
			InProgress: *inProgress,
			Failed:     *failed,
		})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing result: %v", err)
	}
}

func evaluate(u *unstructured.Unstructured, exprs kustomize.HealthCheckExpressions) *celResult {
	evaluator, err := fluxcel.NewStatusEvaluator(&exprs)
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
