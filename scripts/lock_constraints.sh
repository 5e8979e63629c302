#!/usr/bin/env bash
# Regenerate constraints.txt: the newest releases pyproject.toml allows, installed into a fresh
# venv (Python 3.11, Linux x86-64, as CI), frozen.  Then re-measure what the README quotes
# (`braintseg demo`, the test suite) with the new set before committing it.
#   usage: bash scripts/lock_constraints.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -e ".[cpu,dev]"
{
    echo "# The dependency set CI installs and tests (pip install -c constraints.txt -e \".[cpu,dev]\"),"
    echo "# $("$tmp/venv/bin/python" -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())'), written by scripts/lock_constraints.sh on $(date -u +%F)."
    echo "# The README's figures were measured with it."
    "$tmp/venv/bin/pip" freeze --exclude-editable | grep -v '^-e '
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
