#!/bin/sh
# Make sure `promtool` (and `prometheus`) are installed: Debian package `prometheus`.
# Used by `make test` before the rule tests and by the Prometheus integration test.
# Exit 0 when promtool is available afterwards, 1 (with one clear line on stderr) otherwise.
set -u

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "ensure-prometheus: promtool not found and not root (no passwordless sudo): install the Debian package 'prometheus' (apt-get install prometheus)" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: promtool not found and apt-get is unavailable: install Prometheus 2.x (promtool) by hand" >&2
    exit 1
fi

echo "ensure-prometheus: installing the Debian package 'prometheus' (for promtool) ..." >&2
if $SUDO apt-get update -qq >/dev/null 2>&1 \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    && command -v promtool >/dev/null 2>&1; then
    echo "ensure-prometheus: $(promtool --version 2>&1 | head -n 1)" >&2
    exit 0
fi

echo "ensure-prometheus: could not install the Debian package 'prometheus' (apt-get failed: no network or no package source?); promtool is unavailable" >&2
exit 1
