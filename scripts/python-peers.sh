#!/usr/bin/env bash
# Set up a Python virtualenv holding the reference Python peers (fedmsg and
# gilmsg) used for interoperability testing of the Rust implementation.
#
# Usage: scripts/python-peers.sh [VENV_DIR]
#   VENV_DIR defaults to <repo>/target/python-peers.
#
# The script is idempotent: when the venv already holds the pinned versions
# (recorded in a stamp file), nothing is reinstalled. The absolute venv path
# is printed on the last line of stdout.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
venv_dir="${1:-${repo_root}/target/python-peers}"
python_bin="${PYTHON:-python3}"

# Pinned set. Changing anything here changes the stamp and forces a reinstall.
pip_main=(fedmsg==1.1.7 'pyOpenSSL<24.3' 'cryptography<44' moksha.hub click pygments psutil)
pip_nodeps=(gilmsg==0.1.2)
stamp_version=1
stamp_content="stamp=${stamp_version}
main=${pip_main[*]}
nodeps=${pip_nodeps[*]}"

log() { printf '%s\n' "python-peers: $*" >&2; }

if ! command -v "${python_bin}" >/dev/null 2>&1; then
    log "error: ${python_bin} not found"
    exit 1
fi

mkdir -p "$(dirname "${venv_dir}")"
venv_dir="$(cd "$(dirname "${venv_dir}")" && pwd)/$(basename "${venv_dir}")"
stamp_file="${venv_dir}/.python-peers-stamp"
venv_py="${venv_dir}/bin/python"

# Shims for running these old packages on a modern Python 3. Imported
# automatically by every interpreter started from the venv (site module).
write_sitecustomize() {
    local site_packages
    site_packages="$("${venv_py}" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cat > "${site_packages}/sitecustomize.py" <<'PY'
# Installed by scripts/python-peers.sh: compatibility shims that let the
# reference fedmsg/gilmsg peers run on Python >= 3.9.
import threading

# Thread.isAlive() was removed in Python 3.9; gilmsg still calls it.
if not hasattr(threading.Thread, "isAlive"):
    threading.Thread.isAlive = threading.Thread.is_alive
PY
}

if [[ -x "${venv_py}" && -f "${stamp_file}" ]] \
    && [[ "$(cat "${stamp_file}")" == "${stamp_content}" ]] \
    && "${venv_py}" -c 'import fedmsg, gilmsg' >/dev/null 2>&1; then
    log "already installed"
    write_sitecustomize
    printf '%s\n' "${venv_dir}"
    exit 0
fi

log "creating venv in ${venv_dir}"
rm -f "${stamp_file}"
"${python_bin}" -m venv "${venv_dir}"

export PIP_DISABLE_PIP_VERSION_CHECK=1
"${venv_py}" -m pip install --quiet "${pip_main[@]}" >&2
"${venv_py}" -m pip install --quiet --no-deps "${pip_nodeps[@]}" >&2

write_sitecustomize

# Smoke test: the modules import and the shim is active.
"${venv_py}" - <<'PY' >&2
import threading
import fedmsg, fedmsg.crypto, fedmsg.config  # noqa: F401
import gilmsg  # noqa: F401
assert hasattr(threading.Thread, "isAlive")
PY

printf '%s\n' "${stamp_content}" > "${stamp_file}"
log "installed"
printf '%s\n' "${venv_dir}"
