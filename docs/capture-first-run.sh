#!/bin/sh
# Regenerates docs/first-run.txt: what a first-time user sees in a 120x40
# terminal (tmux), from `--help` to a sync of the Rust docs, the same sync
# again, a few mistakes, and Ctrl-C in the middle of a sync.
#
#   cargo build --release && docs/capture-first-run.sh
#
# Needs tmux. Snapshots are taken when the screen shows what they are
# about (polling), plus a few seconds into the transfer.
set -eu
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-$(pwd)/target}/release
DOCS="$(rustc --print sysroot)/share/doc/rust/html"
OUT=docs/first-run.txt
S=replica-first-run
STATE=$(mktemp -d)
rm -rf /tmp/rust-docs-replica /tmp/rust-docs-2
tmux kill-session -t $S 2>/dev/null || true
tmux new-session -d -s $S -x 120 -y 40 \
    "env -i HOME=$HOME TERM=xterm-256color PATH=$BIN:$(dirname "$(command -v rustc)"):/usr/bin:/bin REPLICA_STATE_DIR=$STATE PS1='$ ' bash --norc --noprofile"
: > $OUT
screen() { tmux capture-pane -p -t $S; }
snap() { printf '===== %s\n' "$1" >> $OUT; screen | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >> $OUT; echo >> $OUT; }
run() { tmux send-keys -t $S "clear; $1" Enter; sleep 0.3; }
wait_for() {
    n=0
    until screen | grep -q -- "$1"; do
        n=$((n + 1)); [ $n -lt 6000 ] || { echo "gave up waiting for $1" >&2; exit 1; }
        sleep 0.05
    done
}
prompt() { until screen | grep -v '^$' | tail -n 1 | grep -q '^\$ *$'; do sleep 0.05; done; }

sleep 0.5
run "replica --help"; prompt; snap "1. replica --help"
run "replica sync --help | head -24"; prompt; snap "2. replica sync --help (first lines)"

run "replica sync \"\$(rustc --print sysroot)/share/doc/rust/html\" /tmp/rust-docs-replica"
wait_for "scanning:\|comparing\|files [0-9]"; snap "3. initial sync of the Rust docs: the first screen drawn"
wait_for "files [0-9]"; sleep 1; snap "4. a second into the transfer (no ETA yet)"
sleep 4; snap "5. five seconds later"
wait_for "^summary: "; prompt; snap "6. done"
run "replica sync \"\$(rustc --print sysroot)/share/doc/rust/html\" /tmp/rust-docs-replica"
wait_for "^summary: "; prompt; snap "7. the same command again (nothing to do)"

run "replica sync ~/notes 127.0.0.1:7420; echo exit=\$?; replica sync ~/notes /tmp/x --every 0s; echo exit=\$?; replica serve /etc/hostname; echo exit=\$?; replica sync /tmp/nonexistent /tmp/x; echo exit=\$?"
prompt; snap "8. mistakes"

run "replica sync \"\$(rustc --print sysroot)/share/doc/rust/html\" /tmp/rust-docs-2"
wait_for "files [0-9]"; sleep 2; tmux send-keys -t $S C-c
wait_for "interrupted"; prompt
tmux send-keys -t $S 'echo exit=$?' Enter; sleep 0.5
tmux send-keys -t $S "find /tmp/rust-docs-2 -name '.replica-tmp-*' | wc -l" Enter; sleep 1
snap "9. Ctrl-C two seconds into a sync"

tmux kill-session -t $S
rm -rf "$STATE" /tmp/rust-docs-2
echo "wrote $OUT"
