# shellcheck shell=bash
# A Python virtualenv holding a pinned package set, recorded in a stamp file
# inside it, so that a second run installs nothing. Sourced by
# scripts/python-peers.sh, scripts/fedora-messaging-peer.sh and
# scripts/python-package.sh: three separate venvs, because their pinned sets
# conflict (fedmsg's old pyOpenSSL and cryptography, fedora-messaging's
# recent Twisted). The sourcing script sets `log_name` (its messages'
# prefix), `python_bin` (the interpreter that creates the venv) and
# `venv_dir` before it sources this file.

# log MESSAGE: to stderr (stdout carries only the venv path).
log() { printf '%s: %s\n' "${log_name}" "$*" >&2; }
# die MESSAGE: log it as an error and exit 1.
die() { log "error: $*"; exit 1; }

# venv_start: checks that the interpreter is there and makes `venv_dir`
# absolute (its parent created).
venv_start() {
    command -v "${python_bin}" >/dev/null 2>&1 || die "${python_bin} not found"
    venv_dir="$(venv_abspath "${venv_dir}")"
}

# venv_abspath DIR: DIR as an absolute path (its parent is created).
venv_abspath() {
    local dir="$1" parent
    mkdir -p "$(dirname "${dir}")" || return 1
    parent="$(cd "$(dirname "${dir}")" && pwd)" || return 1
    printf '%s/%s\n' "${parent}" "$(basename "${dir}")"
}

# ensure_venv [--prepare FN] [--check FN [--what TEXT]] [--then FN] DIR STAMP_NAME STAMP_CONTENT PIN...
#
# Leaves the venv DIR (absolute) as it is when its stamp file DIR/STAMP_NAME
# holds STAMP_CONTENT and the check passes; otherwise (re)creates it,
# `pip install`s PIN..., runs THEN (further installs), dies unless the
# check passes, and writes the stamp. PREPARE runs before each check (it
# may write into the venv: python-peers' compatibility shims); CHECK is
# the smoke test (none by default; TEXT says what its failure means, for
# the error). A DIR that exists, is not empty and
# is not a venv is refused. Sets `venv_py` (DIR/bin/python) and
# `venv_reused` (1 when nothing was installed, else 0).
ensure_venv() {
    local prepare=: check=: then=: what="the venv does not work"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --prepare) prepare="$2"; shift 2 ;;
            --check) check="$2"; shift 2 ;;
            --what) what="$2"; shift 2 ;;
            --then) then="$2"; shift 2 ;;
            *) break ;;
        esac
    done
    local dir="$1" stamp_file="$1/$2" stamp_content="$3"
    shift 3
    venv_py="${dir}/bin/python"
    venv_reused=0

    if [[ -x "${venv_py}" && -f "${stamp_file}" ]] \
        && [[ "$(cat "${stamp_file}")" == "${stamp_content}" ]]; then
        "${prepare}"
        if "${check}"; then
            venv_reused=1
            return 0
        fi
        log "existing venv fails its smoke test; rebuilding"
    fi

    if [[ -e "${dir}" && ! -f "${dir}/pyvenv.cfg" && -n "$(ls -A "${dir}")" ]]; then
        die "${dir} exists and is not a virtualenv; refusing to touch it"
    fi
    log "creating venv in ${dir}"
    "${python_bin}" -m venv --clear "${dir}"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "${venv_py}" -m pip install --quiet "$@" >&2
    "${then}"
    "${prepare}"
    "${check}" || die "smoke test failed: ${what} in ${dir}"
    printf '%s\n' "${stamp_content}" > "${stamp_file}"
}

# venv_done: says whether `ensure_venv` found the venv ready or installed
# it, and prints the venv's absolute path as the last line of stdout (what
# scripts/test and the tests read).
venv_done() {
    if [[ "${venv_reused}" == 1 ]]; then
        log "already installed"
    else
        log "installed"
    fi
    printf '%s\n' "${venv_dir}"
}
