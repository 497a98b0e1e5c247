#!/usr/bin/env bash
# Regenerates src/test/resources/nf4 (NF4 test vectors) with the reference in scripts/nf4_reference.py,
# after checking the reference itself. Deterministic: a second run writes the same bytes.
# Needs a Python with numpy (selftest also torch; the versions in scripts/requirements-fixtures.txt):
# PYTHON, default python3.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
"$py" scripts/nf4_reference.py selftest
"$py" scripts/nf4_reference.py vectors --out src/test/resources/nf4
