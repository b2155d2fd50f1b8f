# latbench batch runner: runs every model of one batch with the benchmark runner and writes one
# result file (then prints it): each run's output, stdout and stderr, between delimiter lines that
# carry its exit code and /proc/uptime before and after, and the thermal zones and battery
# temperature before and after the batch. A crashing run is recorded and the loop goes on.
# POSIX sh (mksh, toybox, dash).
# usage: sh run_batch.sh DIR TOKEN MASK LIMIT PREFIX RUNNER [ARG...]
#   DIR     batch directory holding list.txt (one model path a line); result.txt is written there
#   TOKEN   random per batch, so no runner output can pass for a delimiter line
#   MASK    taskset hex mask ('' = not pinned)
#   LIMIT   seconds before a hung run is killed (0 = never; needs `timeout`)
#   PREFIX  put before each model path ('--graph=' for benchmark_model, '' for onnxruntime_perf_test)
dir=$1 token=$2 mask=$3 limit=$4 prefix=$5
shift 5
result=$dir/result.txt
[ -n "$mask" ] && set -- taskset "$mask" "$@"
if [ "$limit" != 0 ] && command -v timeout >/dev/null 2>&1; then
  set -- timeout -s KILL "$limit" "$@"
fi
up() { read -r u _ < /proc/uptime; printf '%s' "$u"; }
temps() {
  z=
  for f in /sys/class/thermal/thermal_zone*/temp; do
    t=$(cat "$f" 2>/dev/null) && [ -n "$t" ] && n=${f%/temp} && z="$z${n##*thermal_zone}:$t,"
  done
  b=$(dumpsys battery 2>/dev/null | grep -m 1 'temperature:')
  printf '@@%s temps %s up=%s zones=%s battery=%s\n' "$token" "$1" "$(up)" "${z%,}" "$(echo ${b##*:})"
}
if ! : > "$result"; then
  printf '@@%s error cannot write %s\n' "$token" "$result"
  exit 3
fi
temps before >> "$result"
i=0
while IFS= read -r m || [ -n "$m" ]; do
  [ -n "$m" ] || continue
  t0=$(up)
  printf '@@%s begin %s\n' "$token" "$i" >> "$result"
  "$@" "$prefix$m" < /dev/null >> "$result" 2>&1
  rc=$?
  printf '\n@@%s end %s rc=%s t0=%s t1=%s\n' "$token" "$i" "$rc" "$t0" "$(up)" >> "$result"
  rm -f "$m"
  i=$((i + 1))
done < "$dir/list.txt"
temps after >> "$result"
printf '@@%s done %s\n' "$token" "$i" >> "$result"
cat "$result"
rm -rf "$dir"
