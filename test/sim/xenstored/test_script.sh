#!/usr/bin/env bash
# scripts/xenstored-sim end to end, with separate processes only: the daemon,
# dom0 through the xenstore-* tools, the guest through the CLI.
# usage: test_script.sh SCRIPT BUILD_DIR
set -euo pipefail
script=$1
build=$2
sim() { "$script" -B "$build" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

dir=$(mktemp -d /tmp/xbd-XXXXXX)
trap 'sim stop "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

out=$(sim start "$dir")
echo "$out"
grep -qx "XENSTORED_PATH=$dir/socket" <<<"$out" || fail "no XENSTORED_PATH line"
pid=$(sed -n 's/^XENSTORED_PID=//p' <<<"$out")
[ "$(cat "/proc/$pid/comm")" = xenstored ] || fail "pid $pid is not xenstored"
sim status "$dir" || fail "status says not running"
sim start "$dir" 2>/dev/null && fail "a second start in the same dir succeeded"

export "$(sim env "$dir")"

be=/local/domain/0/backend/qdisk/5/51712
xenstore-write "$be/state" 1
xenstore-chmod "$be" n0 r5
xenstore-chmod "$be/state" n0 r5
xenstore-write /local/domain/5/device/vbd/51712/state 1
xenstore-chmod /local/domain/5/device/vbd/51712 n5 r0
xenstore-chmod /local/domain/5/device/vbd/51712/state n5 r0

sim introduce "$dir" 5
[ "$(sim guest-read "$dir" 5 "$be/state")" = 1 ] || fail "guest cannot read its backend"
sim guest-write "$dir" 5 "$be/state" 6 2>/dev/null && fail "guest wrote the backend dir"
sim guest-write "$dir" 5 device/vbd/51712/state 3 || fail "guest cannot write its frontend"
[ "$(xenstore-read /local/domain/5/device/vbd/51712/state)" = 3 ] || fail "dom0 misses the write"

# dom0 watch on @releaseDomain, then the domain dies.
events=$dir/events
timeout 5 xenstore-watch -n 2 @releaseDomain >"$events" &
watcher=$!
for _ in $(seq 200); do [ -s "$events" ] && break; sleep 0.01; done  # the initial event
sim kill-domain "$dir" 5
wait "$watcher" || fail "@releaseDomain did not fire after kill-domain"
[ "$(grep -c '^@releaseDomain' "$events")" = 2 ] || fail "unexpected watch output: $(cat "$events")"

sim stop "$dir"
sim status "$dir" && fail "still running after stop"
# Gone, or a zombie waiting for whoever inherited it to reap it.
state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
[ -z "$state" ] || [ "$state" = Z ] || fail "pid $pid survived stop (state $state)"
[ -s "$dir/trace" ] || fail "no trace kept"
echo PASS
