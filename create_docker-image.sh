#!/usr/bin/env bash
# Builds the jobsd container image, tagged jobsd:<version in Cargo.toml> and jobsd:latest, with
# docker or podman, whichever is installed; optionally pushes it or loads it into a local cluster.
set -euo pipefail

usage() {
  cat <<'TEXT'
Usage: create_docker-image.sh [options]

Builds the jobsd image as jobsd:<version> and jobsd:latest.

Options:
  --push REGISTRY   also tag as REGISTRY/jobsd:<version> and push it (e.g. ghcr.io/acme)
  --kind [NAME]     load the image into the kind cluster NAME (default: kind)
  --minikube        load the image into minikube
  --dry-run         print the commands instead of running them
  -h, --help        show this help
TEXT
}

cd "$(dirname "$0")"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "create_docker-image.sh: no version in Cargo.toml" >&2; exit 1; }

registry="" kind_cluster="" minikube=false dry_run=false
while [ $# -gt 0 ]; do
  case "$1" in
    --push)
      [ $# -ge 2 ] || { echo "create_docker-image.sh: --push needs a registry" >&2; exit 2; }
      registry=${2%/}; shift 2 ;;
    --kind)
      if [ $# -ge 2 ] && [ "${2#-}" = "$2" ]; then kind_cluster=$2; shift 2; else kind_cluster=kind; shift; fi ;;
    --minikube) minikube=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "create_docker-image.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

if $dry_run; then
  engine=docker
elif command -v docker >/dev/null 2>&1; then
  engine=docker
elif command -v podman >/dev/null 2>&1; then
  engine=podman
else
  echo "create_docker-image.sh: neither docker nor podman is installed" >&2
  exit 1
fi

run() {
  if $dry_run; then
    printf '%s\n' "$*"
  else
    "$@"
  fi
}

image="jobsd:$version"
run "$engine" build --tag "$image" --tag jobsd:latest .
if [ -n "$registry" ]; then
  run "$engine" tag "$image" "$registry/$image"
  run "$engine" push "$registry/$image"
fi
if [ -n "$kind_cluster" ]; then
  run kind load docker-image "$image" --name "$kind_cluster"
fi
if $minikube; then
  run minikube image load "$image"
fi
