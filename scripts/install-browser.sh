#!/usr/bin/env bash
# Installs headless Chromium and its driver from the distribution's packages (chromium,
# chromium-driver) for the web page's browser tests (tests/test_web.py). Idempotent: does
# nothing when both are there. Never fails the run: when they cannot be installed it says why
# and the browser tests skip, naming this script.
set -uo pipefail
have_all() { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }
if have_all; then echo "install-browser: chromium and chromedriver already installed"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: no apt-get here: install chromium and its driver yourself (the browser tests skip)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-browser: not root and no password-less sudo: apt-get install chromium chromium-driver" \
         "to run the browser tests (they skip)" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s)
echo "install-browser: installing chromium and chromium-driver (Debian packages, about 300 MB)"
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; then
  echo "install-browser: installed in $(( $(date +%s) - t0 ))s"
else
  echo "install-browser: apt-get could not install chromium chromium-driver (the browser tests skip)" >&2
fi
exit 0
