#!/usr/bin/env bash
# Render a hirm report in headless Chromium and save a PNG screenshot.
#
#   benchmarks/check_report_browser.sh REPORT_DIR_OR_HTML [OUT_PNG]
#
# Needs the Debian package `chromium` (apt-get install -y chromium). Exits non-zero if the page
# cannot be rendered or the screenshot is empty.
set -euo pipefail
src="${1:?usage: $0 REPORT_DIR_OR_HTML [OUT_PNG]}"
[[ -d "$src" ]] && src="$src/index.html"
out="${2:-${src%.html}.png}"
[[ -f "$src" ]] || { echo "no such report: $src" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 3; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size=1280,2400 --screenshot="$out" "file://$(realpath "$src")" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot: $out ($(stat -c %s "$out") bytes)"
