#!/usr/bin/env bash
# The GPU check, scripts/device_check.py (its docstring says what it runs and writes), with
# mtltrain installed first where the Python at hand lacks it.
#
#   bash scripts/device_check.sh [--dry-run] [--out DIR] [--work DIR] [--mnist-root DIR]
#
# It runs on $PYTHON (default: python3) where that Python already imports mtltrain, Hydra and
# pytest from outside this folder and has the `mtltrain` command beside it. Else it makes a
# virtual environment ($DEVICE_CHECK_VENV, default: a new temporary folder) that also sees
# that Python's packages, so a torch already built for the machine's GPU is the one used, and
# installs this checkout into it: from the wheels in the folder $DEVICE_CHECK_WHEELS where
# that is set (a machine without network; make them on one with
#   pip wheel --no-deps -w DIR "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "antlr4-python3-runtime==4.9.*"
# and add any other dependency that machine lacks), else with `pip install ".[test]"`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')

installed() {
    (cd / && "$python" -c 'import hydra, mtltrain, pytest, xdist') 2>/dev/null &&
        [ -x "$(dirname "$python")/mtltrain" ]
}

if ! installed; then
    if [ -z "${DEVICE_CHECK_VENV:-}" ]; then
        scratch=$(mktemp -d)
        trap 'rm -rf "$scratch"' EXIT
    fi
    venv=${DEVICE_CHECK_VENV:-$scratch/venv}
    echo "device_check: installing mtltrain into the virtual environment $venv" >&2
    "$python" -m venv --without-pip "$venv"
    own=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    # a .pth line that starts with "import" runs: each of that Python's site folders is added
    # as a site folder (its own .pth files processed), after this environment's own
    "$python" -c 'import site
for folder in site.getsitepackages():
    print(f"import site; site.addsitedir({folder!r})")' >"$own/outer.pth"
    pip=("$python" -m pip --python "$venv/bin/python" install --quiet)
    if [ -n "${DEVICE_CHECK_WHEELS:-}" ]; then
        "${pip[@]}" --no-index --find-links "$DEVICE_CHECK_WHEELS" --no-build-isolation "$repo"
    else
        "${pip[@]}" "$repo[test]"
    fi
    python=$venv/bin/python
fi
"$python" "$repo/scripts/device_check.py" "$@"
