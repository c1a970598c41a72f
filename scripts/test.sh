#!/usr/bin/env bash
# Sets everything up on a fresh machine (the venv, then the container engines), then runs the whole test suite (or the pytest args given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/engines.sh  # Docker, Podman, the local base image and registry for the docker/podman tests
exec .venv/bin/python -m pytest "$@"
