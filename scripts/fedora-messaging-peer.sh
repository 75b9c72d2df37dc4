#!/usr/bin/env bash
# Set up a Python virtualenv holding fedora-messaging 3.9.1, the peer of the
# AMQP interoperability tests (tests/amqp.rs) and the Python anchor
# of the AMQP benchmark. A venv of its own: its dependencies (pika, a recent
# Twisted, jsonschema) do not mix with the pinned fedmsg set of
# scripts/python-peers.sh.
#
# Usage: scripts/fedora-messaging-peer.sh [VENV_DIR]
#   VENV_DIR defaults to <repo>/target/fedora-messaging.
#   The interpreter can be overridden with PYTHON=/path/to/python3.
#
# Idempotent (a stamp file records the pinned set). The absolute venv path
# is printed on the last line of stdout; everything else goes to stderr.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/.." && pwd)"
venv_dir="${1:-${repo_root}/target/fedora-messaging}"
python_bin="${PYTHON:-python3}"

pins=(fedora-messaging==3.9.1)
stamp_content="stamp=1
pins=${pins[*]}"

log() { printf 'fedora-messaging-peer: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "${python_bin}" >/dev/null 2>&1 || die "${python_bin} not found"
mkdir -p "$(dirname "${venv_dir}")"
venv_dir="$(cd "$(dirname "${venv_dir}")" && pwd)/$(basename "${venv_dir}")"
stamp_file="${venv_dir}/.fedora-messaging-stamp"
venv_py="${venv_dir}/bin/python"

smoke_test() {
    "${venv_py}" -c 'import fedora_messaging.api, fedora_messaging.message' >/dev/null 2>&1 \
        && [[ -x "${venv_dir}/bin/fedora-messaging" ]]
}

if [[ -x "${venv_py}" && -f "${stamp_file}" && "$(cat "${stamp_file}")" == "${stamp_content}" ]] && smoke_test; then
    log "already installed"
    printf '%s\n' "${venv_dir}"
    exit 0
fi

if [[ -e "${venv_dir}" && ! -f "${venv_dir}/pyvenv.cfg" && -n "$(ls -A "${venv_dir}")" ]]; then
    die "${venv_dir} exists and is not a virtualenv; refusing to touch it"
fi
log "creating venv in ${venv_dir}"
"${python_bin}" -m venv --clear "${venv_dir}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"${venv_py}" -m pip install --quiet "${pins[@]}" >&2
smoke_test || die "smoke test failed: fedora-messaging does not import in ${venv_dir}"
printf '%s\n' "${stamp_content}" > "${stamp_file}"
log "installed"
printf '%s\n' "${venv_dir}"
