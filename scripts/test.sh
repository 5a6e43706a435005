#!/usr/bin/env bash
# Install everything (scripts/install.sh, seconds when already installed), then lint and test.
# This is the README's test command and exactly what CI runs.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/install.sh"
cd "$REPO"
.venv/bin/ruff check minkseg scannet_tools tests benchmarks
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
