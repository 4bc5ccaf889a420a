#!/usr/bin/env bash
# Installs the chart with a locally built image into a throwaway kind cluster and checks it
# from inside the cluster: pods ready through their gRPC probes, then `modeld verify` through
# the Service (golden rows through Predict), then a pod deletion drains and is replaced.
# CI runs it after the image smoke test; it needs docker, kind, kubectl and helm.
# usage: deploy/kind-e2e.sh IMAGE
set -euo pipefail
image=${1:?usage: deploy/kind-e2e.sh IMAGE}
cluster=modeld-e2e-$$
ns=modeld-e2e
release=modeld-credit-risk

kind create cluster --name "$cluster" --wait 180s
cleanup() {
  local rc=$?
  if ((rc != 0)); then
    kubectl -n "$ns" get pods -o wide || true
    kubectl -n "$ns" describe pods | tail -n 60 || true
    kubectl -n "$ns" logs -l app.kubernetes.io/instance="$release" --tail 50 || true
  fi
  kind delete cluster --name "$cluster" || true
  exit "$rc"
}
trap cleanup EXIT
kind load docker-image "$image" --name "$cluster"

helm install "$release" charts/modeld --namespace "$ns" --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
  --set replicaCount=2 --set resources.requests.cpu=250m --set resources.limits.cpu=1 \
  --wait --timeout 5m

verify() {
  kubectl -n "$ns" delete pod verify --ignore-not-found --wait
  kubectl -n "$ns" run verify --image "$image" --image-pull-policy Never --restart Never \
    --command -- modeld verify --addr "http://$release.$ns.svc:50051" \
    --bundle /models/credit_risk/current --wait-secs 120
  kubectl -n "$ns" wait pod/verify --for=jsonpath='{.status.phase}'=Succeeded --timeout 180s
  kubectl -n "$ns" logs verify
}
verify

# A deleted pod drains (preStop, then SIGTERM) and the Deployment replaces it; the Service
# keeps answering throughout.
pod=$(kubectl -n "$ns" get pods -l app.kubernetes.io/instance="$release" -o name | head -n 1)
kubectl -n "$ns" delete "$pod" --wait=false
verify
kubectl -n "$ns" rollout status deployment/"$release" --timeout 180s
echo "chart e2e: $release ready in kind, golden rows verified through the Service"
