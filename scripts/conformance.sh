#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzingclient (../shared/autobahn/run.sh,
# every case but the permessage-deflate groups 12.* and 13.*) against `wshub serve`'s /echo.
#
# Usage: scripts/conformance.sh      (from anywhere; CI runs it from .ci/run)
#
# Builds the release binary, starts it on a free loopback port (port 0: the kernel picks
# one and the server's "listening on" log line names it, so no other program can take it
# between our choice and the bind), runs the suite, then stops the server with SIGTERM
# (its drain-then-exit path) and checks that it exited 0. The server is stopped by its
# PID on every path out of this script, failures and interrupts included.
#
# Exit status: the suite's (0 all cases OK / NON-STRICT / INFORMATIONAL, 1 a case FAILED or
# is missing, 2 harness problem), or 1 when the server fails to start or to exit cleanly.
#
# Needs python3 (run.sh sets up its own virtualenv on first use, from PyPI) and patch(1);
# patch is installed with apt-get when missing and this runs as root.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# $(dirname "$0")/../../shared/autobahn/run.sh, made absolute before the cd below.
SUITE="$ROOT/../shared/autobahn/run.sh"
# Seconds to wait for the server to listen, and to exit after SIGTERM (its drain timeout
# is 10 s, and by then every suite connection should be long closed).
START_LIMIT=30
STOP_LIMIT=30

say() { echo "conformance: $*" >&2; }

[ -f "$SUITE" ] || { say "no Autobahn harness at $SUITE"; exit 2; }
command -v python3 >/dev/null 2>&1 || { say "python3 is required"; exit 2; }
if ! command -v patch >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing patch"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patch >/dev/null
  else
    say "patch(1) is required (apt-get install patch)"
    exit 2
  fi
fi

cd "$ROOT"
cargo build --release --quiet
BIN="$ROOT/target/release/wshub"

LOG="$(mktemp /tmp/wshub-conformance.XXXXXX.log)"
SERVER_PID=""
# Stops the server with SIGTERM, waits (bounded) and sets SERVER_RC to its exit status;
# SIGKILL past the limit. By PID only: this script started that process and nothing else.
SERVER_RC=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid="$SERVER_PID"
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((STOP_LIMIT * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "server $pid still running ${STOP_LIMIT}s after SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  SERVER_RC=0
  wait "$pid" 2>/dev/null || SERVER_RC=$?
}
# The suite runs in the background so that a signal to this script is handled at once
# (bash runs traps only between foreground commands); run.sh stops its own wstest on TERM.
SUITE_PID=""
cleanup() {
  if [ -n "$SUITE_PID" ]; then
    kill -TERM "$SUITE_PID" 2>/dev/null || true
    wait "$SUITE_PID" 2>/dev/null || true
  fi
  stop_server
}
trap cleanup EXIT
trap 'exit 2' INT TERM

# The suite's 9.x cases send messages and frames of up to 16 MiB.
RUST_LOG=info "$BIN" serve --addr 127.0.0.1:0 --max-message-size 16MiB --max-frame-size 16MiB \
  2>"$LOG" &
SERVER_PID=$!

ADDR=""
for _ in $(seq $((START_LIMIT * 10))); do
  ADDR="$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$LOG" | head -n 1)"
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  say "the server did not start listening within ${START_LIMIT}s; its log:"
  cat "$LOG" >&2
  exit 1
fi
say "server $SERVER_PID listening on $ADDR (log: $LOG)"

bash "$SUITE" "ws://$ADDR/echo" &
SUITE_PID=$!
rc=0
wait "$SUITE_PID" || rc=$?
SUITE_PID=""

# Stop the server and check that its drain ended it cleanly.
stop_server
if [ "$SERVER_RC" -ne 0 ]; then
  say "server exited with status $SERVER_RC; the end of its log ($LOG):"
  tail -n 20 "$LOG" >&2
  [ "$rc" -ne 0 ] || rc=1
else
  say "server exited 0: $(grep -o 'drained .*' "$LOG" | tail -n 1)"
  rm -f "$LOG"
fi
exit "$rc"
