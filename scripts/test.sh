#!/usr/bin/env bash
# The project's test command (README "Test it"): installs what the tests need on a fresh
# Debian machine (moto, Prometheus, Alertmanager, linters), then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== installing test dependencies (only what is missing)"
apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || apt_packages+=(prometheus-alertmanager)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    # Debian's own python3 refuses pip installs (PEP 668): fall back to a virtualenv, put first
    # on PATH so that both `moto_server` and `python3 -c 'import moto'` find it.
    if ! python3 -m pip install -q 'moto[server]' >/dev/null 2>&1; then
        venv="${XDG_CACHE_HOME:-${HOME}/.cache}/app-tier-cmk-exporter/moto-venv"
        if [ ! -x "${venv}/bin/pip" ] && ! python3 -m venv "${venv}" >/dev/null 2>&1; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
            python3 -m venv "${venv}"
        fi
        "${venv}/bin/pip" install -q --disable-pip-version-check 'moto[server]'
        export PATH="${venv}/bin:${PATH}"
    fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
if [ -x scripts/check-deploy.sh ]; then
    echo "== deploy checks"
    scripts/check-deploy.sh
fi
echo "== all checks passed"
