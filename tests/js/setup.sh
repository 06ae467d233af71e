#!/bin/sh
# Installs tests/js/node_modules from package-lock.json, unless it is installed already. The
# end-to-end tests run it before their first JavaScript client (tests/src/node.rs); .ci/run
# runs it up front.
set -eu
cd "$(dirname "$0")"
if [ -f node_modules/.installed-lock.json ] && cmp -s package-lock.json node_modules/.installed-lock.json; then
  exit 0
fi
npm ci --no-audit --no-fund --silent
cp package-lock.json node_modules/.installed-lock.json
