#!/usr/bin/env bash
# Makes sure the browser tests (tests/test_demo.py) find Chromium and its WebDriver: the Debian/Ubuntu packages
# `chromium` and `chromium-driver`, installed with apt-get when they are missing and we run as root.
# Otherwise it fails with one sentence saying how to install them: CI never skips the browser tests silently.
# CHROMIUM=... and CHROMEDRIVER=... point the tests (and this check) at another Chromium and driver.
set -uo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}

have_browser() { [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; }

have_browser && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing chromium and chromium-driver with apt-get for the browser tests (about a minute)..."
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null && have_browser; then
        exit 0
    fi
fi
echo "The browser tests need Chromium and chromedriver ($CHROMIUM, $CHROMEDRIVER): install them as root with" \
    "'apt-get install chromium chromium-driver' (or run this script as root), or set CHROMIUM= and CHROMEDRIVER=" \
    "to your own." >&2
exit 1
