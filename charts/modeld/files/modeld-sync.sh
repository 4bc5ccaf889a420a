#!/usr/bin/env bash
# modeld bundle sync: keeps <MODEL_ROOT>/<TASK>/current pointing at the version named in object
# storage, so that modeld hot-swaps it without a restart.
#
# Storage layout (written by the release pipeline):
#   <SYNC_URL>/<TASK>/<version>/...      one bundle per version, never modified once published
#   <SYNC_URL>/<TASK>/CURRENT            a one-line object: the version that should be live
#   <SYNC_URL>/<TASK>/rollout.yaml       optional: the rollout policy (shadow versions, split)
#
# Each pass: read the wanted version (SYNC_VERSION pins one instead of CURRENT), download it
# into a hidden staging directory unless it is already here, check every file against its
# MANIFEST.sha256, rename it into place, then flip `current` with an atomic rename. A download
# that fails or does not match its manifest is dropped and never becomes `current`; modeld
# re-verifies everything on load in any case.
#
# The rollout policy is copied byte for byte beside `current`, before the flip (so a release
# that clears a split and flips never shows the new version under the old split), once every
# version it names is here; those versions are never pruned. Version names are read from the
# form deploy/release-model.sh writes: `shadow: [a, b]` (or a `- a` list under `shadow:`) and
# `name: weight` lines under `split:`. A policy removed from storage is removed here.
#
# SYNC_URL may also be a local directory (a mounted bucket, or a test).
set -euo pipefail

: "${SYNC_URL:?SYNC_URL (s3://bucket/prefix) is required}"
: "${TASK:?TASK is required}"
MODEL_ROOT=${MODEL_ROOT:-/models}
SYNC_VERSION=${SYNC_VERSION:-}
SYNC_INTERVAL_SECONDS=${SYNC_INTERVAL_SECONDS:-10}
SYNC_KEEP_VERSIONS=${SYNC_KEEP_VERSIONS:-2}
SYNC_ONCE=${SYNC_ONCE:-false}

POLICY=rollout.yaml
task_dir="$MODEL_ROOT/$TASK"
source_dir="${SYNC_URL%/}/$TASK"

log() { printf '%s modeld-sync task=%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$TASK" "$*" >&2; }

# Reads one object to stdout.
fetch_object() {
  case $source_dir in
    s3://*) aws s3 cp --only-show-errors "$source_dir/$1" - ;;
    *) cat "$source_dir/$1" ;;
  esac
}

# Copies one version's directory into $2.
fetch_version() {
  case $source_dir in
    s3://*) aws s3 cp --only-show-errors --recursive "$source_dir/$1/" "$2/" ;;
    *) cp -R "$source_dir/$1/." "$2/" ;;
  esac
}

wanted_version() {
  local version=$SYNC_VERSION
  if [[ -z $version ]]; then
    version=$(fetch_object CURRENT) || return 1
    version=${version//[[:space:]]/}
  fi
  # A version is a plain directory name: nothing that could climb out of the task directory.
  if [[ ! $version =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    log "refusing version name '$version'"
    return 1
  fi
  printf '%s\n' "$version"
}

# Makes $task_dir/$1 a complete, checked copy of the published version.
ensure_version() {
  local version=$1 staging
  [[ -d $task_dir/$version ]] && return 0
  staging=$(mktemp -d "$task_dir/.incoming-$version.XXXXXX")
  log "downloading $version"
  if ! fetch_version "$version" "$staging"; then
    log "download of $version failed"
    rm -rf "$staging"
    return 1
  fi
  if [[ ! -f $staging/MANIFEST.sha256 ]] || ! (cd "$staging" && sha256sum --check --quiet --strict MANIFEST.sha256); then
    log "$version does not match its MANIFEST.sha256; not used"
    rm -rf "$staging"
    return 1
  fi
  chmod -R a+rX "$staging"
  mv -T "$staging" "$task_dir/$version"
}

# Points current at $1 with one rename, so modeld never sees a missing or half-made link.
flip_current() {
  local version=$1
  [[ $(readlink "$task_dir/current" 2>/dev/null) == "$version" ]] && return 0
  ln -sfn "$version" "$task_dir/.current.tmp"
  mv -T "$task_dir/.current.tmp" "$task_dir/current"
  log "current -> $version"
}

# Fetches the published policy into $1: 0 fetched, 2 none published, 1 storage cannot tell.
fetch_policy() {
  case $source_dir in
    s3://*)
      aws s3 cp --only-show-errors "$source_dir/$POLICY" "$1" 2>/dev/null && return 0
      local listing rc=0
      listing=$(aws s3 ls "$source_dir/$POLICY" 2>&1) || rc=$?
      [[ $rc -eq 1 && -z $listing ]] && return 2
      return 1
      ;;
    *)
      [[ -e $source_dir/$POLICY ]] || return 2
      cp "$source_dir/$POLICY" "$1"
      ;;
  esac
}

# The version directories a policy file names, one per line.
policy_versions() {
  [[ -f $1 ]] || return 0
  awk '
    function emit(v) { gsub(/[ \t"\047]/, "", v); if (v != "") print v }
    /^shadow:[ \t]*\[/ { line = $0; sub(/^shadow:[ \t]*\[/, "", line); sub(/\].*$/, "", line)
                          n = split(line, parts, ","); for (i = 1; i <= n; i++) emit(parts[i]); block = ""; next }
    /^shadow:[ \t]*(#.*)?$/ { block = "shadow"; next }
    /^split:[ \t]*(#.*)?$/ { block = "split"; next }
    /^[^ \t#]/ { block = "" }
    block == "shadow" && /^[ \t]*- / { v = $0; sub(/^[ \t]*- /, "", v); sub(/#.*$/, "", v); emit(v) }
    block == "split" && /^[ \t]+[^ \t#-][^:]*:/ { v = $0; sub(/:.*$/, "", v); emit(v) }
  ' "$1"
}

# Installs the published policy beside `current` once every version it names is here.
sync_policy() {
  local incoming="$task_dir/.incoming-$POLICY" rc=0 version
  fetch_policy "$incoming" || rc=$?
  if [[ $rc -eq 2 ]]; then
    rm -f "$incoming"
    if [[ -e $task_dir/$POLICY ]]; then
      rm -f "$task_dir/$POLICY"
      log "rollout policy removed"
    fi
    return 0
  elif [[ $rc -ne 0 ]]; then
    rm -f "$incoming"
    log "cannot read the rollout policy; keeping the one in place"
    return 1
  fi
  while IFS= read -r version; do
    if [[ ! $version =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
      log "rollout policy names '$version', not a version name; policy not used"
      rm -f "$incoming"
      return 1
    fi
    if ! ensure_version "$version"; then
      log "rollout policy names $version, which cannot be fetched; keeping the policy in place"
      rm -f "$incoming"
      return 1
    fi
  done < <(policy_versions "$incoming")
  if cmp -s "$incoming" "$task_dir/$POLICY"; then
    rm -f "$incoming"
  else
    chmod a+r "$incoming"
    mv -T "$incoming" "$task_dir/$POLICY"
    log "rollout policy updated"
  fi
}

# Removes old versions beyond SYNC_KEEP_VERSIONS (newest kept first), never the live one nor
# one the rollout policy in place names.
prune() {
  local live=$1 dir
  local -a old=() named=()
  mapfile -t named < <(policy_versions "$task_dir/$POLICY")
  while IFS= read -r dir; do
    dir=${dir%/}
    dir=${dir##*/}
    [[ $dir == "$live" || $dir == current ]] && continue
    [[ " ${named[*]} " == *" $dir "* ]] && continue
    old+=("$dir")
  done < <(ls -1dt -- "$task_dir"/*/ 2>/dev/null)
  for dir in "${old[@]:SYNC_KEEP_VERSIONS}"; do
    log "removing old version $dir"
    rm -rf "${task_dir:?}/$dir"
  done
}

sync_once() {
  local version
  version=$(wanted_version) || { log "cannot read the wanted version"; return 1; }
  ensure_version "$version" || return 1
  # Before the flip; a policy that cannot be brought in does not hold the flip back.
  sync_policy || true
  flip_current "$version"
  prune "$version"
}

mkdir -p "$task_dir"
if [[ $SYNC_ONCE == true ]]; then
  sync_once
  exit
fi
trap 'log stopping; exit 0' TERM INT
while true; do
  sync_once || log "pass failed; keeping $(readlink "$task_dir/current" 2>/dev/null || echo 'no version')"
  sleep "$SYNC_INTERVAL_SECONDS" &
  wait $!
done
