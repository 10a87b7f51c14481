# Sourced by the scripts: a virtual environment in .venv with the project installed
# (editable) with the extras named in $1. Reruns are quick: pip skips what is there.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo[$1]"
export PATH="$venv/bin:$PATH"
