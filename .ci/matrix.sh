#!/usr/bin/env bash
# The version matrix (noxfile.py, policy in docs/support.md): the fast tests on
# every supported Python, on the lowest supported dependencies, and from a
# freshly built sdist, after build + twine check. Needs PostgreSQL and MariaDB
# up, as .ci/run leaves them. Arguments go to nox: .ci/matrix.sh -s lowest,
# .ci/matrix.sh -s tests-3.13 -- -k cookies (pytest's after the --).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

# Every install comes from the package index, through pip as a user would run
# it: no machine-wide pip configuration (extra indexes, local wheel folders).
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_NO_INDEX
export PIP_DISABLE_PIP_VERSION_CHECK=1

# nox itself, in a venv of its own under .nox (ignored by git and ruff), made
# with the python3 on PATH before the interpreters below join it.
NOX_VERSION=2026.10.20
tool=.nox/.tool-venv
if ! "$tool/bin/nox" --version 2>&1 | grep -qx "$NOX_VERSION"; then
    rm -rf "$tool"
    python3 -m venv "$tool"
    "$tool/bin/pip" install -q --upgrade pip
    "$tool/bin/pip" install -q "nox==$NOX_VERSION"
fi

# nox finds interpreters as pythonX.Y on PATH. pyenv's shims only answer for
# the versions pyenv has selected, so put each installed version's own bin
# folder on PATH where its pythonX.Y does not run already (the newest patch
# release of each minor version first).
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for bin in $(ls -d "$pyenv_root"/versions/3.*/bin 2>/dev/null | sort -rV); do
    version=$(basename "$(dirname "$bin")")   # 3.13.0
    minor=${version%.*}                       # 3.13
    if [ -x "$bin/python$minor" ] && ! "python$minor" -c '' 2>/dev/null; then
        PATH="$bin:$PATH"
    fi
done
export PATH

status=0
"$tool/bin/nox" --error-on-missing-interpreters "$@" || status=$?
echo "matrix: $((SECONDS - start)) s, nox exit status $status"
exit "$status"
