#!/usr/bin/env bash
# Debian's Chromium at /usr/bin/chromium, which the web UI tests drive through Playwright for
# Python (its pip wheel carries the driver; no browser is ever downloaded). Safe to rerun; a
# machine without apt is left alone (the UI tests then skip, and say why).
set -uo pipefail
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
say() { echo "setup-browser: $*"; }

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  say "no apt-get here: install Chromium as /usr/bin/chromium for the UI tests"
  exit 0
fi
if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  as_root apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed"
fi
say "installing chromium"
if DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null 2>&1; then
  say "chromium installed: $(/usr/bin/chromium --version 2>/dev/null)"
else
  say "could not install chromium: the UI tests will skip"
fi
exit 0
