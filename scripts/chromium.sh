#!/usr/bin/env bash
# The browser tests (tests/console) drive Debian's Chromium, never a browser build that a
# tool downloads. Installs the chromium package when it is missing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium: /usr/bin/chromium"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  # The console tests then fail, saying what to install.
  echo "chromium: missing, and no root to install it: apt-get install -y chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium
echo "chromium: installed /usr/bin/chromium"
