#!/usr/bin/env bash
# Releases one model bundle to one task: validate -> publish -> roll out -> verify -> record,
# and rolls back on any failure once the rollout has begun. GitHub Actions
# (.github/workflows/model-release.yml), GitLab CI (deploy/gitlab-ci.yml) and Jenkins
# (deploy/Jenkinsfile) all run this one script, so the flow is the same everywhere.
#
# usage: deploy/release-model.sh TASK VERSION
#
# A version can go live in steps (ROLLOUT=pointer): STAGE=shadow puts it in the shadow of the
# live version (it scores live rows, its answers are compared and never returned), STAGE=share
# gives it a sticky share of the decisions, STAGE=champion (the default) makes it the live
# version. The steps write TASK/rollout.yaml beside TASK/CURRENT; every pod's sync sidecar
# copies it, with the versions it names, and modeld follows it like the `current` link.
#
# Environment:
#   STORAGE_URL     s3://bucket/prefix holding TASK/VERSION/ and TASK/CURRENT (or a directory)
#   MODELD          the modeld binary                                     [modeld]
#   BUNDLE_DIR      the bundle to release                                 [models/TASK/VERSION]
#   ROLLOUT         pointer: write TASK/CURRENT; every pod's sync sidecar flips `current`
#                   helm:    helm upgrade --atomic pinning model.objectStorage.version
#                   none:    validate and publish only                         [pointer]
#   HELM_RELEASE    release name for ROLLOUT=helm; also names the pods to verify
#   HELM_CHART      chart for ROLLOUT=helm                                [charts/modeld]
#   KUBE_NAMESPACE  namespace of the release                              [default]
#   KUBE_SELECTOR   pods to verify            [app.kubernetes.io/instance=$HELM_RELEASE]
#   VERIFY_ADDRS    gRPC addresses to verify, space-separated; default: every running pod
#                   of the release through `kubectl port-forward`
#   GRPC_PORT       modeld's gRPC port in the pods                        [50051]
#   WAIT_SECS       how long each replica may take to serve the version   [300]
#   RELEASE_RECORD  where PREVIOUS_VERSION, LIVE_VERSION and RESULT are written [release.env]
#   STAGE           shadow | share | champion                                 [champion]
#   SHARE           STAGE=share: VERSION's share of the decisions, in (0, 1)      [0.1]
#   STICKY_BY       STAGE=share: what keeps a caller on one version: a feature name,
#                   row_id or request_id                                      [row_id]
#
# Exit status: 0 released and verified; 1 failed before the rollout (nothing changed);
# 2 failed after it and rolled back.
set -euo pipefail

usage() { sed -n '2,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 64; }
[[ $# -eq 2 ]] || usage
task=$1 version=$2
: "${STORAGE_URL:?STORAGE_URL is required (s3://bucket/prefix)}"
MODELD=${MODELD:-modeld}
BUNDLE_DIR=${BUNDLE_DIR:-models/$task/$version}
ROLLOUT=${ROLLOUT:-pointer}
HELM_RELEASE=${HELM_RELEASE:-}
HELM_CHART=${HELM_CHART:-charts/modeld}
KUBE_NAMESPACE=${KUBE_NAMESPACE:-default}
KUBE_SELECTOR=${KUBE_SELECTOR:-app.kubernetes.io/instance=$HELM_RELEASE}
VERIFY_ADDRS=${VERIFY_ADDRS:-}
GRPC_PORT=${GRPC_PORT:-50051}
WAIT_SECS=${WAIT_SECS:-300}
RELEASE_RECORD=${RELEASE_RECORD:-release.env}
STAGE=${STAGE:-champion}
SHARE=${SHARE:-0.1}
STICKY_BY=${STICKY_BY:-row_id}

task_url="${STORAGE_URL%/}/$task"
work=$(mktemp -d)
forwards=()
cleanup() {
  local pid
  for pid in "${forwards[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'release-model: %s\n' "$*" >&2; exit 1; }

is_s3() { [[ $task_url == s3://* ]]; }
read_object() { if is_s3; then aws s3 cp --only-show-errors "$task_url/$1" -; else cat "$task_url/$1"; fi; }
write_object() {
  if is_s3; then
    printf '%s\n' "$2" | aws s3 cp --only-show-errors - "$task_url/$1"
  else
    printf '%s\n' "$2" >"$task_url/$1.tmp" && mv "$task_url/$1.tmp" "$task_url/$1"
  fi
}
upload_dir() {
  if is_s3; then aws s3 cp --only-show-errors --recursive "$1/" "$task_url/$2/"; else mkdir -p "$task_url/$2" && cp -R "$1/." "$task_url/$2/"; fi
}
download_dir() {
  if is_s3; then aws s3 cp --only-show-errors --recursive "$task_url/$1/" "$2/"; else cp -R "$task_url/$1/." "$2/"; fi
}

record() {
  printf 'TASK=%s\nVERSION=%s\nSTAGE=%s\nPREVIOUS_VERSION=%s\nLIVE_VERSION=%s\nRESULT=%s\n' \
    "$task" "$version" "$STAGE" "$previous" "$1" "$2" >"$RELEASE_RECORD"
}

# Sets `addrs` to the gRPC address of every replica to verify.
replica_addrs() {
  addrs=()
  if [[ -n $VERIFY_ADDRS ]]; then
    read -r -a addrs <<<"$VERIFY_ADDRS"
    return
  fi
  local pods pod log port
  mapfile -t pods < <(kubectl -n "$KUBE_NAMESPACE" get pods -l "$KUBE_SELECTOR" \
    --field-selector=status.phase=Running -o name)
  [[ ${#pods[@]} -gt 0 ]] || { echo "no running pods match $KUBE_SELECTOR" >&2; return 1; }
  for pod in "${pods[@]}"; do
    log="$work/forward-${pod##*/}.log"
    kubectl -n "$KUBE_NAMESPACE" port-forward "$pod" ":$GRPC_PORT" >"$log" 2>&1 &
    forwards+=($!)
    port=
    for _ in $(seq 100); do
      port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$log" | head -n 1)
      [[ -n $port ]] && break
      sleep 0.1
    done
    [[ -n $port ]] || { echo "port-forward to $pod failed: $(cat "$log")" >&2; return 1; }
    addrs+=("http://127.0.0.1:$port")
  done
}

# Waits until every replica serves $1 (or, given `--rollout FILE`, has that policy live) and
# answers the golden rows of bundle $2 as training did.
verify_live() {
  local -a addrs args=()
  replica_addrs || return 1
  local addr
  for addr in "${addrs[@]}"; do args+=(--addr "$addr"); done
  "$MODELD" verify "${args[@]}" --bundle "$2" --task "$task" --wait-secs "$WAIT_SECS" "${@:3}"
}

# The policy objects are written as one-line-terminated text, byte for byte what `verify
# --rollout` hashes: an empty policy (no shadow, no split) is no policy.
write_policy() {
  printf '%s\n' "$1" >"$work/rollout.yaml"
  write_object rollout.yaml "$1"
}

rollback() {
  step "rollback to ${previous:-nothing}"
  case $ROLLOUT in
    pointer)
      if [[ -z $previous ]]; then
        echo "no previous version: $task/CURRENT still names $version; fix forward" >&2
        record "unknown" "failed"
        exit 2
      fi
      write_policy "$old_policy"
      write_object CURRENT "$previous"
      ;;
    helm) helm rollback "$HELM_RELEASE" --namespace "$KUBE_NAMESPACE" --wait --timeout "${WAIT_SECS}s" ;;
  esac
  if [[ -n $previous ]]; then
    mkdir -p "$work/previous"
    if download_dir "$previous" "$work/previous" && verify_live "$previous" "$work/previous"; then
      record "$previous" "rolled-back"
      exit 2
    fi
  fi
  echo "the rollback could not be verified; check the service by hand" >&2
  record "unknown" "rollback-unverified"
  exit 2
}

step "validate $BUNDLE_DIR"
[[ $version =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "version '$version' is not a plain directory name"
[[ -d $BUNDLE_DIR ]] || die "no bundle at $BUNDLE_DIR"
case $ROLLOUT in pointer | helm | none) ;; *) die "ROLLOUT must be pointer, helm or none, not $ROLLOUT" ;; esac
case $STAGE in
  champion) ;;
  shadow | share) [[ $ROLLOUT == pointer ]] || die "STAGE=$STAGE needs ROLLOUT=pointer" ;;
  *) die "STAGE must be shadow, share or champion, not $STAGE" ;;
esac
if [[ $STAGE == share ]]; then
  awk -v s="$SHARE" 'BEGIN { exit !(s ~ /^[0-9.]+$/ && s > 0 && s < 1) }' || die "SHARE must be a number in (0, 1), not '$SHARE'"
  [[ $STICKY_BY =~ ^[A-Za-z0-9_.-]+$ ]] || die "STICKY_BY must be a feature name, row_id or request_id"
fi
[[ $ROLLOUT == none || -n $VERIFY_ADDRS || -n $HELM_RELEASE ]] ||
  die "set HELM_RELEASE (the pods to verify) or VERIFY_ADDRS"
[[ $(tr -d '[:space:]' <"$BUNDLE_DIR/version.txt") == "$version" ]] || die "$BUNDLE_DIR/version.txt does not say $version"
"$MODELD" validate "$BUNDLE_DIR" || die "$BUNDLE_DIR failed validation; nothing was published"

step "publish $task_url/$version"
# Published versions are immutable: a second publish of the same bytes is a no-op, different
# bytes under a published name are refused (rollbacks must get back exactly what ran before).
if published=$(read_object "$version/MANIFEST.sha256" 2>/dev/null); then
  [[ $published == "$(cat "$BUNDLE_DIR/MANIFEST.sha256")" ]] ||
    die "$task_url/$version already holds a different bundle; release it under a new version"
  echo "already published, identical"
else
  upload_dir "$BUNDLE_DIR" "$version"
fi

previous='' old_policy=''
case $ROLLOUT in
  none)
    record "" "published"
    step "published $task $version; not rolled out"
    exit 0
    ;;
  pointer)
    previous=$(read_object CURRENT 2>/dev/null | tr -d '[:space:]') || previous=
    # What to put back if this step fails.
    old_policy=$(read_object rollout.yaml 2>/dev/null) || old_policy=
    ;;
  helm)
    [[ -n $HELM_RELEASE ]] || die "ROLLOUT=helm needs HELM_RELEASE"
    previous=$(helm get values "$HELM_RELEASE" --namespace "$KUBE_NAMESPACE" --all --output json |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("model",{}).get("objectStorage",{}).get("version") or "")')
    ;;
esac

if [[ $STAGE != champion ]]; then
  [[ -n $previous ]] || die "STAGE=$STAGE needs a live version to stand beside; release one first"
  [[ $previous != "$version" ]] || die "$version is already the live version"
  case $STAGE in
    shadow) policy="shadow: [$version]" ;;
    share)
      rest=$(awk -v s="$SHARE" 'BEGIN { printf "%.6g", 1 - s }')
      policy=$(printf 'split:\n  %s: %s\n  %s: %s\nsticky_by: %s' "$previous" "$rest" "$version" "$SHARE" "$STICKY_BY")
      ;;
  esac
  step "$STAGE: $task $version beside $previous"
  printf '%s\n' "$policy" >&2
  write_policy "$policy"
  step "verify: every replica has the policy live and $version answers its golden rows"
  if ! verify_live "$version" "$BUNDLE_DIR" --rollout "$work/rollout.yaml"; then
    step "rollback: the previous policy"
    write_policy "$old_policy"
    record "$previous" "rolled-back"
    exit 2
  fi
  record "$previous" "$STAGE"
  step "$task $version is in $STAGE beside $previous"
  exit 0
fi

step "roll out $task $version (was ${previous:-none}) by $ROLLOUT"
case $ROLLOUT in
  pointer)
    # A promotion ends the rollout: the policy is cleared before the flip, so no replica shows
    # the new version under the old split.
    [[ -z $old_policy ]] || write_policy ""
    write_object CURRENT "$version"
    ;;
  helm)
    # On failure --atomic has already put the previous revision back.
    if ! helm upgrade "$HELM_RELEASE" "$HELM_CHART" --namespace "$KUBE_NAMESPACE" --reuse-values \
      --set-string "model.objectStorage.version=$version" --atomic --wait --timeout "${WAIT_SECS}s"; then
      record "$previous" "rolled-back"
      exit 2
    fi
    ;;
esac

step "verify: every replica serves $version and answers its golden rows"
verify_live "$version" "$BUNDLE_DIR" || rollback

record "$version" "released"
step "released $task $version (previous: ${previous:-none})"
