#!/usr/bin/env bash
# Shows the progress of a build that writes its log to a file: the latest
# "[n/N] ..." step of ninja (or make's "[ nn%]"), while process PID runs.
# On a terminal the step is rewritten in place on one line; otherwise a line
# is printed when the step has moved on and at least INTERVAL seconds passed.
#
#   scripts/build_progress.sh LOG PID [INTERVAL]
set -u
log=$1
pid=$2
interval=${3:-30}
tty=0
[ -t 1 ] && tty=1
width=$(( ${COLUMNS:-$( (tput cols) 2>/dev/null || echo 100)} - 1 ))
(( width < 40 )) && width=79

last=""
last_print=0
show() {
  local step=$1
  if ((tty)); then
    printf '\r\033[K    %s' "${step:0:$((width - 4))}"
  else
    printf '    %s\n' "$step"
  fi
}
while :; do
  alive=0
  kill -0 "$pid" 2>/dev/null && alive=1
  step=$(grep -aoE '^\s*\[[0-9]+/[0-9]+\] .*|^\s*\[ *[0-9]+%\] .*' "$log" 2>/dev/null | tail -n 1 |
         sed -E 's/^\s+//')
  if [ -n "$step" ] && [ "$step" != "$last" ]; then
    now=$(date +%s)
    if ((tty)) || ((now - last_print >= interval)) || ((!alive)); then
      show "$step"
      last=$step
      last_print=$now
    fi
  fi
  ((alive)) || break
  sleep 1
done
((tty)) && [ -n "$last" ] && printf '\n'
exit 0
