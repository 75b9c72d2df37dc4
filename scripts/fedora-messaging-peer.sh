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

log_name=fedora-messaging-peer
# shellcheck source=lib/venv.sh
source "${script_dir}/lib/venv.sh"
venv_start

smoke_test() {
    "${venv_py}" -c 'import fedora_messaging.api, fedora_messaging.message' >/dev/null 2>&1 \
        && [[ -x "${venv_dir}/bin/fedora-messaging" ]]
}

ensure_venv --check smoke_test --what "fedora-messaging does not import" \
    "${venv_dir}" .fedora-messaging-stamp "${stamp_content}" "${pins[@]}"
venv_done
