#!/usr/bin/env bash
# Build (or reuse) hack/kstatus, the kstatus probe the GitOps health tests run, into the
# same cache root as the control-plane tools. Prints the binary's path last on stdout.
#   ${XDG_CACHE_HOME:-~/.cache}/tandem-operator/bin/kstatus-<cli-utils>_flux-<fluxcd/pkg/runtime>/kstatus
# A stamp next to the binary holds the hash of hack/kstatus's sources (go.mod, go.sum,
# main.go): an edited probe is rebuilt, an unchanged one is reused without Go.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/kstatus"
version="$(awk '$1 == "sigs.k8s.io/cli-utils" { print $2 }' "$src/go.mod")"
flux="$(awk '$1 == "github.com/fluxcd/pkg/runtime" { print $2 }' "$src/go.mod")"
[[ -n "$version" ]] || { echo "build-kstatus: no sigs.k8s.io/cli-utils requirement in $src/go.mod" >&2; exit 1; }
[[ -n "$flux" ]] || { echo "build-kstatus: no github.com/fluxcd/pkg/runtime requirement in $src/go.mod" >&2; exit 1; }
bin="${XDG_CACHE_HOME:-$HOME/.cache}/tandem-operator/bin/kstatus-${version}_flux-$flux"
stamp="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -d' ' -f1)"
mkdir -p "$bin"
# Serialise concurrent callers (parallel test workers) on the build below.
exec 9>"$bin/.lock"
flock 9

if [[ -x "$bin/kstatus" && "$(cat "$bin/kstatus.sha256" 2>/dev/null)" == "$stamp" ]]; then
  echo "build-kstatus: cached at $bin/kstatus" >&2
  echo "$bin/kstatus"
  exit 0
fi

command -v go >/dev/null || { echo "build-kstatus: the Go toolchain (go >= 1.24) is required" >&2; exit 1; }
echo "build-kstatus: building kstatus with sigs.k8s.io/cli-utils $version and fluxcd/pkg/runtime $flux ..." >&2
start=$SECONDS
(cd "$src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags="-s -w" -o "$bin/kstatus.tmp" .)
mv "$bin/kstatus.tmp" "$bin/kstatus"
echo "$stamp" >"$bin/kstatus.sha256"
echo "build-kstatus: built kstatus in $((SECONDS - start))s" >&2
echo "$bin/kstatus"
