#!/usr/bin/env bash
# The live page in a real browser: starts `replica serve --status-addr`,
# runs a few passes (one bandwidth-limited, so the throughput chart has a
# shape), then has Debian's headless chromium (1) load the page, run its
# scripts and check the figures of those passes are on it, and (2) take
# the screenshot kept in docs/live-page.png.
#
#   scripts/page-check.sh            # check and refresh docs/live-page.png
#   SCREENSHOT=/tmp/x.png scripts/page-check.sh
#
# Needs: cargo, chromium (apt-get install chromium). Takes about 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${SCREENSHOT:-docs/live-page.png}"
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "page-check: no chromium (apt-get install chromium)" >&2; exit 1; }

cargo build --locked --quiet --bin replica
bin="${CARGO_TARGET_DIR:-target}/debug/replica"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/src/photos/2024" "$work/src/notes" "$work/dst"
for i in $(seq 1 40); do
  head -c $((20000 + i * 997)) /dev/urandom > "$work/src/photos/2024/img_$(printf %04d "$i").jpg"
done
for i in $(seq 1 25); do
  printf 'note %s\n%s\n' "$i" "$(date)" > "$work/src/notes/note-$i.md"
done

"$bin" serve "$work/dst" --listen 127.0.0.1:0 --status-addr 127.0.0.1:0 \
  --insecure-plaintext --min-free 0 --state-dir "$work/server-state" > "$work/serve.out" 2>&1 &
server_pid=$!
for _ in $(seq 1 200); do
  grep -q '^listening on ' "$work/serve.out" && break
  sleep 0.05
done
addr="$(sed -n 's/^listening on //p' "$work/serve.out")"
page="$(sed -n 's|^status on http://\(.*\)/status$|\1|p' "$work/serve.out")"
[ -n "$addr" ] && [ -n "$page" ] || { cat "$work/serve.out" >&2; exit 1; }

sync() { "$bin" sync "$work/src" "replica://$addr" --insecure-plaintext --state-dir "$work/client-state" "$@" > /dev/null; }
sync --bwlimit 400K
cp "$work/src/photos/2024/img_0001.jpg" "$work/src/photos/2024/img_0001-copy.jpg"
rm "$work/src/notes/note-3.md"
sleep 3
head -c 900000 /dev/urandom > "$work/src/photos/2024/panorama.jpg"
sync --bwlimit 200K
sleep 2
sync

flags=(--headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars
       --user-data-dir="$work/profile" --virtual-time-budget=5000)
dom="$("$browser" "${flags[@]}" --dump-dom "http://$page/" 2>/dev/null)"
for want in 'data-loaded="yes"' '66 files' 'panorama.jpg' '<svg' 'note-3.md'; do
  grep -qF "$want" <<< "$dom" || { echo "page-check: '$want' not on the rendered page" >&2; echo "$dom" >&2; exit 1; }
done
"$browser" "${flags[@]}" --window-size=1200,1150 --screenshot="$out" "http://$page/" 2>/dev/null
echo "page-check: the page shows the passes; screenshot in $out"
