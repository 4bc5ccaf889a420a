#!/usr/bin/env bash
# Runs a built modeld image the way the Helm chart runs it (read-only root file system, no
# capabilities, no privilege escalation, its own non-root user) and checks that it serves:
# ready, the baked example's golden rows through Predict, a clean exit on SIGTERM.
# usage: deploy/image-smoke.sh IMAGE
set -euo pipefail
image=${1:?usage: deploy/image-smoke.sh IMAGE}
name=modeld-smoke-$$

cleanup() {
  local rc=$?
  if ((rc != 0)); then docker logs "$name" 2>&1 | tail -n 50 || true; fi
  docker rm -f "$name" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT

docker run -d --name "$name" --read-only --cap-drop ALL --security-opt no-new-privileges \
  -p 127.0.0.1:50051:50051 -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 "$image" >/dev/null

ready=
for _ in $(seq 60); do
  if curl -fsS http://127.0.0.1:9090/readyz >/dev/null 2>&1; then ready=1; break; fi
  sleep 1
done
[[ -n $ready ]] || { echo "image did not become ready in 60 s" >&2; exit 1; }

docker run --rm --network host "$image" \
  verify --addr http://127.0.0.1:50051 --bundle /models/credit_risk/current --wait-secs 60

# The HTTP/JSON face answers too.
curl -fsS http://127.0.0.1:8080/v1/tasks | grep -q '"serving":true' \
  || { echo "the HTTP/JSON face does not list a serving task" >&2; exit 1; }

docker stop --time 30 "$name" >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$name")
[[ $code == 0 ]] || { echo "modeld exited with $code on SIGTERM" >&2; exit 1; }
echo "image $image: ready, golden rows verified, HTTP/JSON face up, clean shutdown"
