#!/usr/bin/env bash
# Build (or reuse) kube-apiserver, etcd, kubectl and helm from the pinned Go modules in
# hack/tools, into a cache outside the repository. Prints the binary directory last.
#   TANDEM_TOOLS_DIR overrides the directory; nothing is rebuilt when a binary exists.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools/versions.env
source "$here/tools/versions.env"
tag="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
bin="${TANDEM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem-operator/bin/$tag}"
mkdir -p "$bin"

command -v go >/dev/null || { echo "build-tools: the Go toolchain (go >= 1.24) is required" >&2; exit 1; }

build() {  # name package
  local name=$1 pkg=$2
  if [[ -x "$bin/$name" ]]; then
    echo "build-tools: $name cached at $bin/$name" >&2
    return
  fi
  echo "build-tools: building $name from $pkg (first build takes several minutes) ..." >&2
  local start=$SECONDS
  (cd "$here/tools" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "build-tools: built $name in $((SECONDS - start))s" >&2
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubectl k8s.io/kubernetes/cmd/kubectl
build helm helm.sh/helm/v3/cmd/helm
echo "$bin"
