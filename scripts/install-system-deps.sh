#!/usr/bin/env bash
# Installs the operating-system pieces the workbench uses offline: the Fashion-MNIST data set
# (Debian package), npm (to fetch the stroke data the default hanzi task is drawn from) where it
# is missing, and, when asked with --browser, Chromium for the browser tests.
# Best effort: without root or apt it says what to install by hand and carries on.
set -u
want=(dataset-fashion-mnist)
command -v npm >/dev/null 2>&1 || want+=(npm)
[ "${1:-}" = "--browser" ] && want+=(chromium chromium-driver)

missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "Installing system packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { echo "apt-get could not install ${missing[*]}" >&2; exit 1; }
else
  echo "Note: system packages not installed (${missing[*]}); install them with your package manager," >&2
  echo "      or the workbench falls back to downloads where it can." >&2
fi
