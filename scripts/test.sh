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
# Citus for tests/test_citus.py: not in Debian's archive, built from the source kept beside the
# repository (../shared/citus) when that is there; without it those tests skip and say why.
citus_build="$(dirname "$PWD")/shared/citus/build.sh"
if [ -f "$citus_build" ]; then
  bash "$citus_build" || echo "pgmaxsim: building Citus failed; the Citus tests will be skipped"
else
  echo "pgmaxsim: $citus_build not found; the Citus tests will be skipped"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
echo "pgmaxsim: set-up took $(( $(date +%s) - t0 ))s; running tests"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
echo "pgmaxsim: tests finished in $(( $(date +%s) - t0 ))s (exit $rc)"
exit $rc
