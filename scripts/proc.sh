# Sourced by infra.sh and stack.sh: whether a process recorded in a pid file still runs.

# alive PID: the process exists and is not a zombie. `kill -0` alone also succeeds for a
# zombie: a server killed (SIGKILL, OOM) stays one until its parent reaps it, and ours is
# whatever adopted it after the starting script exited, often an init that never reaps.
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0 # no /proc (macOS): kill -0 is all there is
  # The state is the field after the parenthesised command name.
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  case "$state" in Z | X | x | '') return 1 ;; esac
}

# running PID DIR: PID is alive and is the server of DIR (it runs in DIR), not an unrelated
# process that reused the PID of a server that died.
running() {
  alive "$1" || return 1
  [ -e "/proc/$1/cwd" ] || return 0
  [ "$(readlink "/proc/$1/cwd" 2>/dev/null)" = "$2" ]
}
