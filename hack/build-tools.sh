#!/usr/bin/env bash
# Build (or reuse) etcd, kube-apiserver, kubectl, helm, kube-scheduler and
# kube-controller-manager from the pinned Go modules in hack/tools, into a cache outside the
# repository, and kwok through hack/build-kwok.sh. Prints the binary directory last.
#   hack/build-tools.sh [NAME...]   only these binaries (default: all of them); a later call
#                                   builds only what is missing, so adding a binary here
#                                   never rebuilds the others.
#   TANDEM_TOOLS_DIR overrides the directory; nothing is rebuilt when a binary exists.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools/versions.env
source "$here/tools/versions.env"
tag="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_r${BUILD_REVISION}"
bin="${TANDEM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem-operator/bin/$tag}"
mkdir -p "$bin"

command -v go >/dev/null || { echo "build-tools: the Go toolchain (go >= 1.24) is required" >&2; exit 1; }

kube_minor="${KUBERNETES_VERSION#*.}"; kube_minor="${kube_minor%%.*}"
# Stamp the release into the binaries, as the Kubernetes and Helm release builds do:
# `kubectl version` and discovery report v1.X.Y instead of an unparsable development version.
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X ${pkg}.gitVersion=v${KUBERNETES_VERSION} -X ${pkg}.gitMajor=1"
  kube_ldflags+=" -X ${pkg}.gitMinor=${kube_minor} -X ${pkg}.gitTreeState=clean"
done
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
helm_ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${kube_minor}"

build() {  # name package [extra ldflags]
  local name=$1 pkg=$2 extra=${3:-}
  if [[ -x "$bin/$name" ]]; then
    echo "build-tools: $name cached at $bin/$name" >&2
    return
  fi
  echo "build-tools: building $name from $pkg (first build takes several minutes) ..." >&2
  local start=$SECONDS
  (cd "$here/tools" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $extra" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "build-tools: built $name in $((SECONDS - start))s" >&2
}

all=(etcd kube-apiserver kubectl helm kube-scheduler kube-controller-manager kwok)
wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=("${all[@]}")
for name in "${wanted[@]}"; do
  case "$name" in
    etcd) build etcd go.etcd.io/etcd/server/v3 ;;
    kube-apiserver) build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags" ;;
    kubectl) build kubectl k8s.io/kubernetes/cmd/kubectl "$kube_ldflags" ;;
    helm) build helm helm.sh/helm/v3/cmd/helm "$helm_ldflags" ;;
    kube-scheduler) build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$kube_ldflags" ;;
    kube-controller-manager)
      build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags" ;;
    # kwok has its own module, Go version and cache directory (hack/build-kwok.sh): only its
    # progress goes to stderr, so the last line on stdout stays this directory.
    kwok) "$here/build-kwok.sh" >&2 ;;
    *) echo "build-tools: unknown binary '$name' (known: ${all[*]})" >&2; exit 2 ;;
  esac
done
echo "$bin"
