#!/usr/bin/env bash
# Lab teardown: stop the automl process lab-001 started, and its trainers, and check that none
# of them is left. `--purge` also deletes the data directory (datasets, runs, models).
set -euo pipefail
# shellcheck source=lib/lab.sh
source "$(dirname "$0")/lib/lab.sh"

purge=false
[ "${1:-}" = "--purge" ] && purge=true

pid=$(lab_running_pid)
if [ -z "$pid" ]; then
  echo "No lab process is running"
else
  group=$(lab_group_members "$pid")
  if grep -qx "$pid" <<<"$group"; then
    # A process group leader (started through setsid): stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  echo "Stopping automl (pid $pid)"
  # SIGTERM drains in-flight calls; give it 30 s, then SIGKILL what is left.
  for _ in $(seq 1 150); do
    [ -z "$(lab_group_members "$pid")" ] && ! lab_alive "$pid" && break
    sleep 0.2
  done
  left=$(lab_group_members "$pid")
  if [ -n "$left" ] || lab_alive "$pid"; then
    echo "Still running after 30 s, killing: $pid $left" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  left=$(lab_group_members "$pid")
  if [ -n "$left" ] || lab_alive "$pid"; then
    echo "Could not stop every lab process: $pid $left" >&2
    exit 1
  fi
  echo "automl (pid $pid) and its trainers are stopped"
fi
rm -f "$LAB_PID_FILE"

if $purge; then
  rm -rf "$AUTOML__DATA_DIR"
  echo "Removed $AUTOML__DATA_DIR"
fi
