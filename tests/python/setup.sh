#!/bin/sh
# Makes tests/python/.venv with the packages of requirements.txt, unless it has them already.
# The end-to-end tests run it before their first Python client (tests/src/python.rs); .ci/run
# runs it up front.
set -eu
cd "$(dirname "$0")"
if [ -f .venv/installed-requirements.txt ] && cmp -s requirements.txt .venv/installed-requirements.txt; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
cp requirements.txt .venv/installed-requirements.txt
