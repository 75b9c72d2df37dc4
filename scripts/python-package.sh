#!/usr/bin/env bash
# Set up the Python virtualenv the tests of the Python package (issue 13,
# bindings/python) run in: pytest, SQLAlchemy, fedora-messaging 3.9.1 (the
# callback wrapper's host) and maturin, plus the package itself, gilmsg_rs,
# built from this checkout.
#
# Usage: scripts/python-package.sh [VENV_DIR]
#   VENV_DIR defaults to <repo>/target/python-package.
#   The interpreter can be overridden with PYTHON=/path/to/python3.
#   GILMSG_PYTHON_PROFILE=release builds the extension optimised (default:
#   dev, which reuses the debug build of `cargo build` in target/debug).
#
# Idempotent: the pinned dependencies are installed once (a stamp file
# records them); the package is rebuilt every time, which costs a cargo
# freshness check when nothing changed. The build shares this checkout's
# target/ (CARGO_TARGET_DIR), so it compiles only the binding crate. The
# absolute venv path is printed on the last line of stdout; everything else
# goes to stderr.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
venv_dir="${1:-${repo_root}/target/python-package}"
python_bin="${PYTHON:-python3}"
profile="${GILMSG_PYTHON_PROFILE:-dev}"

pins=(maturin==1.16.0 pytest==9.2.0 SQLAlchemy==2.1.9 fedora-messaging==3.9.1)
stamp_content="stamp=1
pins=${pins[*]}"

log_name=python-package
# shellcheck source=lib/venv.sh
source "${script_dir}/lib/venv.sh"
venv_start
command -v cargo >/dev/null 2>&1 || die "cargo not found (the package is built from source)"
export PIP_DISABLE_PIP_VERSION_CHECK=1

ensure_venv "${venv_dir}" .python-package-stamp "${stamp_content}" "${pins[@]}"
if [[ "${venv_reused}" == 1 ]]; then
    log "dependencies already installed"
fi

# The package: maturin from the venv (no isolated build environment to
# download each time), into this checkout's target/.
log "building gilmsg_rs (profile ${profile})"
PATH="${venv_dir}/bin:${PATH}" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${repo_root}/target}" \
MATURIN_PEP517_ARGS="--profile ${profile}" \
    "${venv_py}" -m pip install --quiet --no-build-isolation --no-deps --force-reinstall \
    "${repo_root}/bindings/python" >&2
"${venv_py}" -c 'import gilmsg_rs, gilmsg_rs.compat' >/dev/null \
    || die "smoke test failed: gilmsg_rs does not import in ${venv_dir}"
log "installed"
printf '%s\n' "${venv_dir}"
