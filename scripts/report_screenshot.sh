#!/usr/bin/env bash
# How a reader sees a report: headless Chromium renders report.html in a 1280-pixel-wide window to a PNG.
#
#   bash scripts/report_screenshot.sh runs/sweeps/default/analysis/report.html docs/img/report.png [HEIGHT]
#
# Needs Chromium (Debian: apt-get install chromium) or Chrome; CHROMIUM=/path/to/binary picks one.
set -euo pipefail
html=$(realpath "$1"); png=$(realpath -m "$2"); height=${3:-2400}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
[ -n "$browser" ] || { echo "report_screenshot: no Chromium found (set CHROMIUM=...)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# No network, no sandbox (root in a container), no first-run or background traffic.
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-sync \
  --disable-background-networking --disable-component-update --hide-scrollbars \
  --user-data-dir="$profile" --window-size="1280,$height" --screenshot="$png" "file://$html" >/dev/null 2>&1
[ -s "$png" ] || { echo "report_screenshot: $browser wrote no screenshot" >&2; exit 1; }
echo "$png"
