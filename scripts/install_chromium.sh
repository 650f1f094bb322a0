#!/usr/bin/env bash
# Chromium for the browser tests (tests/test_web.py): Debian's chromium package, which Playwright drives by
# its path (/usr/bin/chromium, or ENCORE_CHROMIUM). Playwright's own browser download is never used: the
# browser comes from the system's packages like every other system dependency. Installs it where apt-get
# exists and may be used (as root, or through sudo without a password) and otherwise says what to run:
# without it the browser tests are skipped. A no-op, in milliseconds, once it is installed. Used by
# `make install`.
set -euo pipefail

PACKAGES=(chromium)

if dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    as_root="cannot"
fi
if [ "$as_root" = cannot ] || ! command -v apt-get >/dev/null; then
    cat >&2 <<MESSAGE
note: Chromium is not installed, so the browser tests of the web page (tests/test_web.py) are skipped.
To run them, install it; on Debian or Ubuntu:
    sudo apt-get install --no-install-recommends ${PACKAGES[*]}
elsewhere from the system's package manager, with ENCORE_CHROMIUM naming its executable.
MESSAGE
    exit 0
fi
$as_root apt-get update -qq
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
