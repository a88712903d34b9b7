#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite fuzzingclient (the shared harness's
# run.sh, every case but the permessage-deflate groups 12.* and 13.*) against
# `wshub serve`'s /echo.
#
# Usage: scripts/conformance.sh            (from anywhere; CI runs it from .ci/run)
#        scripts/conformance.sh --locate   print the harness folder and exit 0, or say
#                                          why there is none and exit 3 (runs nothing)
#
# The harness (run.sh, its patches and pins) is not part of this repository. It is looked
# for, in order, in $AUTOBAHN_DIR, in ../shared/autobahn beside this checkout, and in
# ../shared/autobahn beside the main checkout when this one is a `git worktree`.
#
# Builds the release binary and asks cargo where it put it (so CARGO_TARGET_DIR and
# friends are honoured), starts it on a free loopback port (port 0: the kernel picks
# one and the server's "listening on" log line names it, so no other program can take it
# between our choice and the bind), runs the suite, then stops the server with SIGTERM
# (its drain-then-exit path) and checks that it exited 0. The server is stopped by its
# PID on every path out of this script, failures and interrupts included. The suite's
# report folder is removed when every case passed and kept (its path printed) otherwise.
#
# Exit status: the suite's (0 all cases OK / NON-STRICT / INFORMATIONAL, 1 a case FAILED or
# is missing, 2 harness problem), 1 when the build fails or the server fails to start or
# to exit cleanly, 3 when no harness was found.
#
# Needs python3 (run.sh sets up its own virtualenv on first use, from PyPI; here in
# $AUTOBAHN_VENV, by default under ~/.cache, so the shared harness folder is never
# written) and patch(1); patch is installed with apt-get when missing and this runs as
# root.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# Seconds to wait for the server to listen, and to exit after SIGTERM (its drain timeout
# is 10 s, and by then every suite connection should be long closed).
START_LIMIT=30
STOP_LIMIT=30

say() { echo "conformance: $*" >&2; }

# Sets HARNESS to the harness folder, or WHY to the places looked in and returns 1.
HARNESS=""
WHY=""
locate_harness() {
  local candidates=()
  if [ -n "${AUTOBAHN_DIR:-}" ]; then
    candidates=("$AUTOBAHN_DIR")
  else
    candidates=("$ROOT/../shared/autobahn")
    # In a linked worktree the common git dir is the main checkout's .git.
    local common
    if common="$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)"; then
      candidates+=("$(dirname "$common")/../shared/autobahn")
    fi
  fi
  local dir
  for dir in "${candidates[@]}"; do
    if [ -f "$dir/run.sh" ]; then
      HARNESS="$(cd "$dir" && pwd)"
      return 0
    fi
  done
  local looked
  looked="$(printf '%s, ' "${candidates[@]}")"
  WHY="no Autobahn harness (run.sh) in ${looked%, }; set AUTOBAHN_DIR to its folder"
  return 1
}

if [ "${1:-}" = "--locate" ]; then
  if locate_harness; then
    echo "$HARNESS"
    exit 0
  fi
  echo "$WHY" >&2
  exit 3
fi
[ $# -eq 0 ] || { say "unknown argument: $1 (usage: scripts/conformance.sh [--locate])"; exit 2; }

locate_harness || { say "$WHY"; exit 3; }
SUITE="$HARNESS/run.sh"
export AUTOBAHN_VENV="${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wshub-autobahn-venv}"
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
# Cargo prints one JSON object per artifact on stdout (diagnostics still go to stderr as
# text); the wshub binary's object names its path, wherever the target directory is.
BUILD_JSON="$(mktemp /tmp/wshub-conformance-build.XXXXXX.json)"
if ! cargo build --release --quiet --bin wshub --message-format json-render-diagnostics \
  >"$BUILD_JSON"; then
  rm -f "$BUILD_JSON"
  say "cargo build --release failed (its errors are above)"
  exit 1
fi
BIN="$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "wshub" \
            and "bin" in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])
' "$BUILD_JSON")"
rm -f "$BUILD_JSON"
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
  say "cargo build succeeded but named no wshub executable${BIN:+ (it named $BIN, which is not there)}"
  exit 1
fi

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
# The suite's report folder: ours, so that it can be removed afterwards.
REPORT="$(mktemp -d /tmp/autobahn-report.XXXXXX)"
KEEP_REPORT=""
cleanup() {
  if [ -n "$SUITE_PID" ]; then
    kill -TERM "$SUITE_PID" 2>/dev/null || true
    wait "$SUITE_PID" 2>/dev/null || true
  fi
  stop_server
  if [ -z "$KEEP_REPORT" ]; then rm -rf "$REPORT"; fi
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
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    say "$BIN is running but logged no 'listening on' line within ${START_LIMIT}s; its log:"
  else
    pid="$SERVER_PID"
    SERVER_PID=""
    status=0
    wait "$pid" 2>/dev/null || status=$?
    say "$BIN exited with status $status before it was listening; its log:"
  fi
  cat "$LOG" >&2
  exit 1
fi
say "server $SERVER_PID listening on $ADDR (log: $LOG)"

AUTOBAHN_OUT="$REPORT" bash "$SUITE" "ws://$ADDR/echo" &
SUITE_PID=$!
rc=0
wait "$SUITE_PID" || rc=$?
SUITE_PID=""
if [ "$rc" -ne 0 ]; then
  KEEP_REPORT=1
  say "the suite's report is kept in $REPORT"
fi

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
