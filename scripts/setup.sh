#!/usr/bin/env bash
# Set up this checkout on a fresh Debian 12 / 64-bit Raspberry Pi OS (Bookworm) machine:
# the Debian packages the terminal and its tests need, then a virtual environment in .venv
# with the project installed in editable mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# libzbar0: the pyzbar decoder; chromium and fonts-noto-cjk: the screen and its browser tests;
# systemd: systemd-analyze for the unit checks; postgresql: the server the county tests start a
# throwaway cluster of (tests/pgkit.py; psycopg[binary] brings its own libpq); libssl3: OpenSSL 3's
# libcrypto, which protocol/sm2.py verifies SM2 with; openssl: the second SM2 implementation the
# tests check it against (tests/test_sm2.py).
APT_PACKAGES=(python3 python3-venv python3-dev sqlite3 libzbar0 chromium fonts-noto-cjk systemd
  postgresql libssl3 openssl)
need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# A Pi needs only the terminal's own dependencies (pip install .); this checkout also
# runs the county, the simulator and the tests.
.venv/bin/python -m pip install -q -e ".[county,hwsim,test]"
echo "setup: ready (.venv)"
