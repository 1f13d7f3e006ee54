#!/usr/bin/env bash
# End-to-end run on a real Kubernetes cluster (e2e/cluster/test_real_cluster.py).
#
#   e2e/cluster/run.sh [pytest arguments...]
#
# Which cluster (VLM_E2E_CLUSTER, default auto):
#   kind | k3d  create a throw-away cluster (needs a Docker engine), build the
#               operator image (make image-operator) and load it into the nodes;
#               the cluster is deleted at the end unless VLM_E2E_KEEP=1.
#   existing    use VLM_E2E_KUBECONFIG, else KUBECONFIG, else ~/.kube/config; the
#               image VLM_E2E_IMAGE must be pullable by the cluster's nodes.
#   auto        existing when VLM_E2E_KUBECONFIG is set; else kind, then k3d, when
#               Docker answers and the tool is installed; else existing when
#               KUBECONFIG is set; else it stops, saying why (exit status 3).
#
# Other settings: VLM_E2E_CLUSTER_NAME (default vlm-e2e), VLM_E2E_IMAGE (default
# ghcr.io/vlm-operator/vlm-operator:e2e for kind/k3d), PYTHON (default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
TOOL="${VLM_E2E_CLUSTER:-auto}"
NAME="${VLM_E2E_CLUSTER_NAME:-vlm-e2e}"
created=""
workdir="$(mktemp -d)"

log() { echo "run.sh: $*" >&2; }

cleanup() {
    if [ -n "$created" ] && [ "${VLM_E2E_KEEP:-0}" != 1 ]; then
        log "deleting the $created cluster $NAME"
        case "$created" in
            kind) kind delete cluster --name "$NAME" || true ;;
            k3d) k3d cluster delete "$NAME" || true ;;
        esac
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

docker_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

if [ "$TOOL" = auto ]; then
    if [ -n "${VLM_E2E_KUBECONFIG:-}" ]; then
        TOOL=existing
    elif docker_answers && command -v kind >/dev/null 2>&1; then
        TOOL=kind
    elif docker_answers && command -v k3d >/dev/null 2>&1; then
        TOOL=k3d
    elif [ -n "${KUBECONFIG:-}" ]; then
        TOOL=existing
    else
        log "no cluster: no VLM_E2E_KUBECONFIG or KUBECONFIG, and no Docker engine with kind or k3d"
        exit 3
    fi
fi

command -v kubectl >/dev/null 2>&1 || { log "kubectl is not on PATH"; exit 3; }

case "$TOOL" in
    kind | k3d)
        docker_answers || { log "$TOOL needs a Docker engine, and docker info does not answer"; exit 3; }
        command -v "$TOOL" >/dev/null 2>&1 || { log "$TOOL is not on PATH"; exit 3; }
        IMAGE="${VLM_E2E_IMAGE:-ghcr.io/vlm-operator/vlm-operator:e2e}"
        KUBECONFIG_FILE="$workdir/kubeconfig"
        log "building $IMAGE"
        make image-operator OPERATOR_IMAGE="$IMAGE"
        if [ "$TOOL" = kind ]; then
            kind create cluster --name "$NAME" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
            created=kind
            kind load docker-image "$IMAGE" --name "$NAME"
        else
            k3d cluster create "$NAME" --wait --kubeconfig-update-default=false
            created=k3d
            k3d kubeconfig get "$NAME" >"$KUBECONFIG_FILE"
            k3d image import "$IMAGE" --cluster "$NAME"
        fi
        ;;
    existing)
        KUBECONFIG_FILE="${VLM_E2E_KUBECONFIG:-${KUBECONFIG:-$HOME/.kube/config}}"
        IMAGE="${VLM_E2E_IMAGE:-}"
        if [ -z "$IMAGE" ]; then
            log "existing cluster: testing the release image (set VLM_E2E_IMAGE to test another)"
        fi
        ;;
    *)
        log "VLM_E2E_CLUSTER must be kind, k3d, existing or auto, not '$TOOL'"
        exit 2
        ;;
esac

log "cluster: $TOOL ($KUBECONFIG_FILE)"
kubectl --kubeconfig "$KUBECONFIG_FILE" --request-timeout=10s get --raw /readyz >/dev/null \
    || { log "the cluster of $KUBECONFIG_FILE does not answer"; exit 3; }

export VLM_E2E_KUBECONFIG="$KUBECONFIG_FILE"
if [ -n "${IMAGE:-}" ]; then export VLM_E2E_IMAGE="$IMAGE"; fi
"$PYTHON" -m pytest e2e/cluster/test_real_cluster.py -v -p no:cacheprovider "$@"
