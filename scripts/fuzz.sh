#!/usr/bin/env bash
# Coverage-guided fuzzing of Consulta's parsers and state machines with AFL++ on stable Rust
# (`cargo afl`; the harness is the separate cargo workspace in fuzz/, see docs/fuzzing.md).
#   scripts/fuzz.sh --list              the targets
#   scripts/fuzz.sh TARGET SECONDS      fuzz one target for SECONDS (fresh from fuzz/seeds/TARGET)
#   scripts/fuzz.sh all SECONDS         every target in turn, SECONDS each (one fuzzer at a time)
#   FUZZ_RESUME=1 scripts/fuzz.sh ...   continue from the last run's queue in fuzz/out/TARGET
# Before fuzzing, every seed and every committed crash input (fuzz/regressions/TARGET) is replayed.
# Prints execs and execs/s from AFL's fuzzer_stats; exits non-zero, listing the inputs, when a
# crash or hang was found. Installs cargo-afl (which builds AFL++ itself) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

targets() { grep -A2 '^\[\[bin\]\]' Cargo.toml | sed -n 's/^name = "\(.*\)"/\1/p' | grep -vx 'replay\|seedgen'; }

if [ "${1:-}" = "--list" ]; then targets; exit 0; fi
if [ $# -ne 2 ]; then
  echo "usage: scripts/fuzz.sh TARGET|all SECONDS | scripts/fuzz.sh --list" >&2
  exit 2
fi
which="$1" seconds="$2"
if [ "$which" = all ]; then list=$(targets); else
  targets | grep -qx "$which" || { echo "no target $which (scripts/fuzz.sh --list)" >&2; exit 2; }
  list="$which"
fi

if ! cargo afl --version >/dev/null 2>&1; then
  echo "==> installing cargo-afl (builds AFL++)"
  cargo install cargo-afl --locked --quiet
fi
echo "==> building the fuzz targets (cargo afl build --release)"
cargo afl build --release --locked --quiet

# No CPU frequency or core-pattern tuning is possible (or needed) in a container; the machine
# is shared, so no core is pinned.
export AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_FAST_CAL=1

failed=0
for t in $list; do
  replay=(seeds/"$t")
  [ -d regressions/"$t" ] && replay+=(regressions/"$t")
  target/release/replay "$t" "${replay[@]}" 2>/dev/null || {
    echo "FAIL $t: a seed or regression input crashes: target/release/replay $t ${replay[*]}"
    failed=1
    continue
  }
  out="out/$t"
  input=(-i "seeds/$t")
  if [ -n "${FUZZ_RESUME:-}" ] && [ -d "$out/default/queue" ]; then input=(-i -); else rm -rf "$out"; fi
  mkdir -p "$out"
  limit=1000 size=()
  # worker_rtp sets up a real call (DTLS) in each new fork: give an input time. Its inputs are
  # programs (a few bytes an operation): left to grow, they reached 70 kB, thousands of
  # datagrams an execution, and 0.4 s each; 4 kB is still dozens of operations.
  [ "$t" = worker_rtp ] && limit=10000 size=(-G 4096)
  timeout --signal=INT $((seconds + 120)) cargo afl fuzz "${input[@]}" -o "$out" -V "$seconds" \
    -t "$limit" "${size[@]}" -m none "target/release/$t" >"$out/afl.log" 2>&1 || true
  stats="$out/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "FAIL $t: afl-fuzz did not start; its log:"; tail -20 "$out/afl.log"; failed=1; continue
  fi
  stat() { sed -n "s/^$1 *: *//p" "$stats"; }
  crashes=$(stat saved_crashes) hangs=$(stat saved_hangs)
  printf '%-12s %10s execs in %5ss, %8s execs/s, corpus %5s, %s crashes, %s hangs\n' \
    "$t" "$(stat execs_done)" "$(stat run_time)" "$(stat execs_per_sec)" "$(stat corpus_count)" \
    "$crashes" "$hangs"
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    failed=1
    for f in "$out"/default/crashes/id* "$out"/default/hangs/id*; do
      [ -e "$f" ] && echo "  $PWD/$f"
    done
    echo "  reproduce: fuzz/target/release/replay $t FILE"
  fi
done
exit $failed
