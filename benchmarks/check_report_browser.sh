#!/usr/bin/env bash
# Render a hirm report in headless Chromium: check that every image loads and that the page logs
# nothing to the console (no JavaScript errors), then save a PNG screenshot.
#
#   benchmarks/check_report_browser.sh REPORT_DIR_OR_HTML [OUT_PNG] [WIDTHxHEIGHT]
#
# Needs the Debian package `chromium` (apt-get install -y chromium). Prints
# "images: N loaded, M broken; console messages: K" and exits non-zero if the page cannot be rendered,
# an image is broken, the console has messages, or the screenshot is empty.
set -euo pipefail
src="${1:?usage: $0 REPORT_DIR_OR_HTML [OUT_PNG] [WIDTHxHEIGHT]}"
[[ -d "$src" ]] && src="$src/index.html"
out="${2:-${src%.html}.png}"
size="${3:-1400x2600}"
[[ -f "$src" ]] || { echo "no such report: $src" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[[ -n "$browser" ]] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 3; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
url="file://$(realpath "$src")"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=10000)

# 1. The DOM after the load event (the page records its image counts on <body>) and the console log.
"$browser" "${flags[@]}" --user-data-dir="$work/a" --enable-logging=stderr --v=0 --dump-dom "$url" \
  >"$work/dom.html" 2>"$work/log.txt" || { echo "chromium failed" >&2; tail -5 "$work/log.txt" >&2; exit 1; }
loaded="$(grep -o 'data-images-loaded="[0-9]*"' "$work/dom.html" | grep -o '[0-9]*' || true)"
broken="$(grep -o 'data-images-broken="[0-9]*"' "$work/dom.html" | grep -o '[0-9]*' || true)"
console="$(grep -c ':CONSOLE' "$work/log.txt" || true)"
echo "images: ${loaded:-?} loaded, ${broken:-?} broken; console messages: $console"
grep ':CONSOLE' "$work/log.txt" >&2 || true
[[ -n "$loaded" && -n "$broken" ]] || { echo "the page did not finish loading (no image counts on <body>)" >&2; exit 1; }
[[ "$broken" == 0 && "$console" == 0 ]] || exit 1

# 2. The screenshot.
"$browser" "${flags[@]}" --user-data-dir="$work/b" --window-size="${size/x/,}" --screenshot="$out" "$url" \
  >/dev/null 2>&1
[[ -s "$out" ]] || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot: $out ($(stat -c %s "$out") bytes)"
