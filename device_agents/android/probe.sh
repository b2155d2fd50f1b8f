# latbench probe: the device facts a latency table is valid for, fixed performance mode, stale
# session cleanup, and a check that the pushed runner executes. POSIX sh (mksh, toybox, dash).
# usage: sh probe.sh SESSION_DIR RUNNER CHECK_ARG FIXED_PERF(0|1)
# Prints one fact a line: prop NAME=VALUE | fixedperf RC TEXT | cpu N ONLINE MAX_KHZ CUR_KHZ GOVERNOR |
# zone N TEMP TYPE | battery TENTHS_C | session NAME | runner_rc RC | runner_out LINE | probe_done
# Files are read by the shell itself (rd), not by a `head` per file: a phone forks and execs far
# fewer processes (8 cores x 4 files, and the zones, were a command substitution and a head each).
session=$1 runner=$2 check=$3 fixed=$4
nl='
'
# rd FILE: FILE's first line in $v ('-' when unreadable or empty)
rd() { v=; { IFS= read -r v < "$1"; } 2>/dev/null; v=${v:--}; }
for p in ro.product.manufacturer ro.product.model ro.product.brand ro.product.device ro.board.platform \
    ro.soc.manufacturer ro.soc.model ro.hardware ro.build.fingerprint ro.build.version.release \
    ro.build.version.sdk ro.product.cpu.abi ro.product.cpu.abilist; do
  v=$(getprop "$p")
  printf 'prop %s=%s\n' "$p" "${v%%"$nl"*}"
done
if [ "$fixed" = 1 ]; then
  out=$(cmd power set-fixed-performance-mode-enabled true 2>&1 </dev/null)
  rc=$?
  printf 'fixedperf %s %s\n' "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)"
fi
for c in /sys/devices/system/cpu/cpu[0-9]*; do
  [ -d "$c" ] || continue
  rd "$c/online"; on=$v
  [ "$on" = - ] && on=1
  rd "$c/cpufreq/cpuinfo_max_freq"; max=$v
  rd "$c/cpufreq/scaling_cur_freq"; cur=$v
  rd "$c/cpufreq/scaling_governor"
  printf 'cpu %s %s %s %s %s\n' "${c##*/cpu}" "$on" "$max" "$cur" "$v"
done
for z in /sys/class/thermal/thermal_zone*; do
  [ -d "$z" ] || continue
  rd "$z/temp"; t=$v
  rd "$z/type"
  printf 'zone %s %s %s\n' "${z##*thermal_zone}" "$t" "$v"
done
b=$(dumpsys battery 2>/dev/null | grep -m 1 'temperature:')
printf 'battery %s\n' "$(echo ${b##*:})"
# sessions of earlier runs that died without cleaning up: untouched for 12 hours (any host);
# the host removes its own dead ones at cleanup from this list
find "${session%/*}" -mindepth 1 -maxdepth 1 -type d -mmin +720 -exec rm -rf {} + 2>/dev/null
for d in "${session%/*}"/*; do
  [ -d "$d" ] && printf 'session %s\n' "${d##*/}"
done
chmod 755 "$runner"
out=$("$runner" "$check" </dev/null 2>&1)
printf 'runner_rc %s\n' "$?"
printf '%s\n' "$out" | head -n 8 | sed 's/^/runner_out /'
echo probe_done
