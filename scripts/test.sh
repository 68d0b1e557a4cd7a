#!/usr/bin/env bash
# The whole test suite, with all of its own set-up: PostgreSQL 15 + pgvector + plpython3u
# (apt, through sudo when not root), headless Chromium, the virtualenv and packages, then pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k migrations -x
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
bash scripts/install-postgres.sh
bash scripts/install-browser.sh   # chromium for tests/test_web.py (they skip, saying why, without it)
bash scripts/venv.sh models,test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
echo "pgmaxsim: set-up took $(( $(date +%s) - t0 ))s; running tests"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
echo "pgmaxsim: tests finished in $(( $(date +%s) - t0 ))s (exit $rc)"
exit $rc
