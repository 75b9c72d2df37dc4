#!/usr/bin/env bash
# Set up a Python virtualenv holding the reference Python peers (fedmsg and
# gilmsg) used for interoperability testing of the Rust implementation.
#
# Usage: scripts/python-peers.sh [VENV_DIR]
#   VENV_DIR defaults to <repo>/target/python-peers.
#   The interpreter can be overridden with PYTHON=/path/to/python3.
#
# Idempotent: when the venv already holds the pinned set (recorded in a stamp
# file inside the venv), nothing is reinstalled. The absolute venv path is
# printed on the last line of stdout; everything else goes to stderr.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
venv_dir="${1:-${repo_root}/target/python-peers}"
python_bin="${PYTHON:-python3}"

# Pinned set. Changing anything here changes the stamp and forces a reinstall.
pip_main=(fedmsg==1.1.7 'pyOpenSSL<24.3' 'cryptography<44' moksha.hub click pygments psutil)
pip_nodeps=(gilmsg==0.1.2)
# gilmsg imports pkg_resources; newer interpreters no longer seed setuptools
# into a venv, and recent setuptools releases drop pkg_resources.
pip_fallback_setuptools='setuptools<81'
stamp_version=2
stamp_content="stamp=${stamp_version}
main=${pip_main[*]}
nodeps=${pip_nodeps[*]}"

log_name=python-peers
# shellcheck source=lib/venv.sh
source "${script_dir}/lib/venv.sh"
venv_start

# Compatibility shims for running these old packages on a modern Python 3.
# site imports sitecustomize in every interpreter started from the venv, so
# console scripts (gilmsg-logger, fedmsg-relay, fedmsg-tail, ...) get them too.
write_sitecustomize() {
    local site_packages
    site_packages="$("${venv_py}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cat > "${site_packages}/sitecustomize.py" <<'PY'
# Written by scripts/python-peers.sh: compatibility shims that let the
# reference fedmsg/gilmsg peers run on current Python 3 releases.
import logging
import threading

# Thread.isAlive() was removed in Python 3.9; gilmsg.publish still calls it.
if not hasattr(threading.Thread, "isAlive"):
    threading.Thread.isAlive = threading.Thread.is_alive

# Logger.warn() is gone in Python 3.13; fedmsg and gilmsg still call it.
if not hasattr(logging.Logger, "warn"):
    logging.Logger.warn = logging.Logger.warning
PY
}

smoke_test() {
    "${venv_py}" - <<'PY' >/dev/null 2>&1
import threading
import fedmsg, fedmsg.config, fedmsg.crypto, fedmsg.consumers  # noqa: F401
import gilmsg  # noqa: F401
assert hasattr(threading.Thread, "isAlive")
PY
}

# After the main set: gilmsg without its (unpinnable) dependencies, and
# pkg_resources where the interpreter did not bring it.
install_rest() {
    "${venv_py}" -m pip install --quiet --no-deps "${pip_nodeps[@]}" >&2
    if ! "${venv_py}" -c 'import pkg_resources' >/dev/null 2>&1; then
        "${venv_py}" -m pip install --quiet "${pip_fallback_setuptools}" >&2
    fi
}

ensure_venv --prepare write_sitecustomize --check smoke_test \
    --what "fedmsg/gilmsg do not import" --then install_rest \
    "${venv_dir}" .python-peers-stamp "${stamp_content}" "${pip_main[@]}"
venv_done
