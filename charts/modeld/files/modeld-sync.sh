#!/usr/bin/env bash
# modeld bundle sync: keeps <MODEL_ROOT>/<TASK>/current pointing at the version named in object
# storage, so that modeld hot-swaps it without a restart.
#
# Storage layout (written by the release pipeline):
#   <SYNC_URL>/<TASK>/<version>/...      one bundle per version, never modified once published
#   <SYNC_URL>/<TASK>/CURRENT            a one-line object: the version that should be live
#
# Each pass: read the wanted version (SYNC_VERSION pins one instead of CURRENT), download it
# into a hidden staging directory unless it is already here, check every file against its
# MANIFEST.sha256, rename it into place, then flip `current` with an atomic rename. A download
# that fails or does not match its manifest is dropped and never becomes `current`; modeld
# re-verifies everything on load in any case.
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

# Removes old versions beyond SYNC_KEEP_VERSIONS (newest kept first), never the live one.
prune() {
  local live=$1 dir
  local -a old=()
  while IFS= read -r dir; do
    dir=${dir%/}
    dir=${dir##*/}
    [[ $dir != "$live" && $dir != current ]] && old+=("$dir")
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
