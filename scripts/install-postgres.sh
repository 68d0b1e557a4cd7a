#!/usr/bin/env bash
# Installs PostgreSQL 15 + plpython3u + pgvector (built from Debian trixie's source
# package) on Debian/Ubuntu. Idempotent: does nothing when everything is present.
# Runs apt through sudo when not root.
set -euo pipefail
PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_LIB=/usr/lib/postgresql/$PG_MAJOR/lib
have_all() {
  [ -x "$PG_BIN/initdb" ] && [ -f "$PG_LIB/plpython3.so" ] && [ -f "$PG_LIB/vector.so" ]
}
if have_all; then echo "install-postgres: PostgreSQL $PG_MAJOR, plpython3u and pgvector already installed"; exit 0; fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-postgres: not root and no sudo: install postgresql-$PG_MAJOR, postgresql-plpython3-$PG_MAJOR and pgvector first" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
need_build=0
[ -f "$PG_LIB/vector.so" ] || need_build=1
if [ ! -x "$PG_BIN/initdb" ] || [ ! -f "$PG_LIB/plpython3.so" ] || { [ "$need_build" = 1 ] && [ ! -x "$PG_BIN/pg_config" ]; }; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "postgresql-$PG_MAJOR" "postgresql-plpython3-$PG_MAJOR" \
    "postgresql-server-dev-$PG_MAJOR" build-essential >/dev/null
fi

if [ ! -f "$PG_LIB/vector.so" ]; then
  # pgvector is not packaged for bookworm: build Debian trixie's source package.
  # The deb-src entry is derived from this machine's own first Debian stanza so no
  # mirror host is written down here.
  d=$(mktemp -d)
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ]; then
    awk 'BEGIN{RS=""} NR==1' "$src" \
      | sed -e 's/^Types:.*/Types: deb-src/' -e 's/^Suites:.*/Suites: trixie/' > "$d/src.sources"
    mkdir -p "$d/lists/partial"
    mkdir -p "$d/cache/archives/partial"
    # A private lists/cache directory: needs no root, touches nothing of the system's apt state.
    opts="-o Dir::Etc::SourceList=$d/src.sources -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache -o Debug::NoLocking=1"
    apt-get $opts update -qq
    (cd "$d" && apt-get $opts source --download-only pgvector >/dev/null && tar xzf pgvector_*.orig.tar.gz)
  else
    # Ubuntu and others: the distribution's own source package.
    (cd "$d" && apt-get source --download-only pgvector >/dev/null && tar xzf pgvector_*.orig.tar.gz)
  fi
  make -s -C "$d"/pgvector-*/ PG_CONFIG="$PG_BIN/pg_config" >/dev/null
  $SUDO make -s -C "$d"/pgvector-*/ PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
  rm -rf "$d"
fi
have_all && echo "install-postgres: ok"
