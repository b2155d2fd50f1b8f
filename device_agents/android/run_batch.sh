# latbench batch runner: runs the models of one batch with the benchmark runner and writes one
# result file (then prints it): each run's output, stdout and stderr, between delimiter lines that
# carry its exit code, /proc/uptime before and after, and the hottest temperature read just before
# it; the thermal zones and battery temperature before and after the batch. A crashing run is
# recorded and the loop goes on. Thermal gate: before each model the hottest plausible reading of
# the thermal zones and the battery is compared with MAXTEMP; above it the loop stops (a 'hot'
# line naming the model it did not start) and leaves the rest of the batch for a resume.
# POSIX sh (mksh, toybox, dash).
# usage: sh run_batch.sh DIR TOKEN MASK LIMIT PREFIX MAXTEMP START RUNNER [ARG...]
#   DIR      batch directory holding list.txt (one model path a line); result.txt is written there
#   TOKEN    random per run, so no runner output can pass for a delimiter line
#   MASK     taskset hex mask ('' = not pinned)
#   LIMIT    seconds before a hung run is killed (0 = never; needs `timeout`)
#   PREFIX   put before each model path ('--graph=' for benchmark_model, '' for onnxruntime_perf_test)
#   MAXTEMP  millidegrees C a model may start at ('-' = no gate)
#   START    index in list.txt of the first model to run (0, or where a hot stop left off)
dir=$1 token=$2 mask=$3 limit=$4 prefix=$5 maxtemp=$6 start=$7
shift 7
result=$dir/result.txt
[ -n "$mask" ] && set -- taskset "$mask" "$@"
if [ "$limit" != 0 ] && command -v timeout >/dev/null 2>&1; then
  set -- timeout -s KILL "$limit" "$@"
fi
up() { read -r u _ < /proc/uptime; printf '%s' "$u"; }
battery() { b=$(dumpsys battery 2>/dev/null | grep -m 1 'temperature:'); printf '%s' "$(echo ${b##*:})"; }
temps() {
  z=
  for f in /sys/class/thermal/thermal_zone*/temp; do
    t=$(cat "$f" 2>/dev/null) && [ -n "$t" ] && n=${f%/temp} && z="$z${n##*thermal_zone}:$t,"
  done
  printf '@@%s temps %s up=%s zones=%s battery=%s\n' "$token" "$1" "$(up)" "${z%,}" "$(battery)"
}
# consider VALUE SCALE SENSOR: VALUE (an integer; SCALE 0 reads it as a thermal zone does: millidegrees,
# decidegrees from 200, degrees below, as android.py's _celsius; else VALUE * SCALE is millidegrees) becomes
# the hottest reading ($hot, read by $src) when plausible (-30 to 125 C) and hotter than the one so far
consider() {
  a=${1#-}
  case $a in ''|*[!0-9]*|?????????*) return ;; esac
  if [ "$2" != 0 ]; then m=$(($1 * $2)); elif [ "$a" -ge 1000 ]; then m=$1; elif [ "$a" -ge 200 ]; then
    m=$(($1 * 100)); else m=$(($1 * 1000)); fi
  [ "$m" -gt -30000 ] && [ "$m" -lt 125000 ] || return
  if [ "$hot" = - ] || [ "$m" -gt "$hot" ]; then hot=$m src=$3; fi
}
# hottest: the hottest plausible thermal zone or battery reading in $hot (millidegrees C, '-' if none)
hottest() {
  hot=- src=-
  for f in /sys/class/thermal/thermal_zone*/temp; do
    { read -r t < "$f"; } 2>/dev/null || continue
    n=${f%/temp}
    consider "$t" 0 "${n##*thermal_zone}"
  done
  consider "$(battery)" 100 battery
}
if ! : > "$result"; then
  printf '@@%s error cannot write %s\n' "$token" "$result"
  exit 3
fi
temps before >> "$result"
i=0 stopped=
while IFS= read -r model || [ -n "$model" ]; do
  [ -n "$model" ] || continue
  if [ "$i" -lt "$start" ]; then i=$((i + 1)); continue; fi
  hottest
  if [ "$maxtemp" != - ] && [ "$hot" != - ] && [ "$hot" -gt "$maxtemp" ]; then
    printf '@@%s hot %s temp=%s at=%s\n' "$token" "$i" "$hot" "$src" >> "$result"
    stopped=1
    break
  fi
  t0=$(up)
  printf '@@%s begin %s temp=%s at=%s\n' "$token" "$i" "$hot" "$src" >> "$result"
  "$@" "$prefix$model" < /dev/null >> "$result" 2>&1
  rc=$?
  printf '\n@@%s end %s rc=%s t0=%s t1=%s\n' "$token" "$i" "$rc" "$t0" "$(up)" >> "$result"
  rm -f "$model"
  i=$((i + 1))
done < "$dir/list.txt"
temps after >> "$result"
printf '@@%s done %s\n' "$token" "$i" >> "$result"
cat "$result"
[ -n "$stopped" ] || rm -rf "$dir"
