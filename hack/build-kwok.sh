#!/usr/bin/env bash
# Build (or reuse) kwok, the fake kubelet of the local control plane's Nodes, from the pinned
# module in hack/kwok, into the same cache root as the other tools. Prints the binary's path
# last on stdout.
#   ${XDG_CACHE_HOME:-~/.cache}/tandem-operator/bin/kwok-<version>/kwok
# A stamp next to the binary holds the hash of hack/kwok's go.mod and go.sum: a changed pin is
# rebuilt, an unchanged one is reused without Go. hack/kwok is its own module because kwok
# needs newer k8s.io libraries (and Go) than the control plane pinned in hack/tools.
#   TANDEM_TOOLS_DIR, when set, is used instead of the versioned directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/kwok"
version="$(awk '$1 == "sigs.k8s.io/kwok" { print $2 }' "$src/go.mod")"
[[ -n "$version" ]] || { echo "build-kwok: no sigs.k8s.io/kwok requirement in $src/go.mod" >&2; exit 1; }
bin="${TANDEM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem-operator/bin/kwok-$version}"
stamp="$(cat "$src/go.mod" "$src/go.sum" | sha256sum | cut -d' ' -f1)"
mkdir -p "$bin"
# Serialise concurrent callers (parallel test workers) on the build below.
exec 9>"$bin/.kwok.lock"
flock 9

if [[ -x "$bin/kwok" && "$(cat "$bin/kwok.sha256" 2>/dev/null)" == "$stamp" ]]; then
  echo "build-kwok: kwok cached at $bin/kwok" >&2
  echo "$bin/kwok"
  exit 0
fi

command -v go >/dev/null || { echo "build-kwok: the Go toolchain is required" >&2; exit 1; }
echo "build-kwok: building kwok $version (about two CPU-minutes) ..." >&2
start=$SECONDS
ldflags="-s -w"
(cd "$src" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags="$ldflags" \
  -o "$bin/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok)
mv "$bin/kwok.tmp" "$bin/kwok"
echo "$stamp" >"$bin/kwok.sha256"
echo "build-kwok: built kwok in $((SECONDS - start))s" >&2
echo "$bin/kwok"
