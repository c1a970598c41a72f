#!/usr/bin/env bash
# Sets everything up on a fresh machine (the venv, the container engines, PostgreSQL), then runs the whole test suite (or the pytest args given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/engines.sh  # Docker, Podman, the local base image and registry for the docker/podman tests
bash scripts/postgres.sh  # a PostgreSQL for the postgres registry tests (the one running here, or a private one)
# Two xdist workers (most tests wait on real servers, so two cores do twice the work); MCPAC_TEST_WORKERS=0 runs
# in one process, e.g. to debug with -x. loadgroup keeps the xdist_group-marked tests (the engines') on one worker.
exec .venv/bin/python -m pytest -n "${MCPAC_TEST_WORKERS:-2}" --dist loadgroup "$@"
