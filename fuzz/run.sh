#!/usr/bin/env bash
# fuzz/run.sh — build every fuzz/fuzz_*.c as a libFuzzer target (clang,
# ASan + UBSan) and run each one briefly against its seed corpus.
#
#   bash fuzz/run.sh                 all targets, FUZZ_SECONDS each (default 20)
#   bash fuzz/run.sh fuzz_file ...   only the named targets
#   FUZZ_SECONDS=300 bash fuzz/run.sh
#   FUZZ_BUILD_ONLY=1 bash fuzz/run.sh   build, do not run
#   FUZZ_LIB_SRC='src/core/*.c src/format/*.c' bash fuzz/run.sh fuzz_file
#                                    link only part of the library (a target
#                                    that needs only that part, while another
#                                    part is being rewritten)
#
# Conventions for a target fuzz/fuzz_NAME.c:
#   - it defines LLVMFuzzerTestOneInput and is linked with the whole library;
#   - seeds live in fuzz/corpus/NAME/ (optional; copied to a scratch dir under
#     build/fuzz/corpus/, so the committed seeds never change);
#   - a libFuzzer dictionary fuzz/fuzz_NAME.dict is used when present.
#
# The library objects are compiled once into build/fuzz/obj (rebuilt only
# when a source or a header it includes changed) and every target links
# against them.  Findings land in build/fuzz/artifacts/NAME/, the log in
# build/fuzz/NAME.log.  Prints one summary line per target; exits non-zero
# when a target fails to build or the fuzzer reports anything.
set -u
cd "$(dirname "$0")/.." || exit 2

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CC=${FUZZ_CC:-clang}
OUT=build/fuzz
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"
CFLAGS="-g -O1 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -I/usr/include/x86_64-linux-gnu"
LIBS="-lopenblas -llapacke -lxxhash -lz -lmicrohttpd -lcjson -lm -lpthread"

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz: $CC not found (libFuzzer needs clang; Debian: clang, libclang-rt-dev)" >&2
    exit 2
fi
mkdir -p "$OUT/obj" "$OUT/artifacts" "$OUT/corpus"

# OpenMP when this clang has it (the library builds without it too).
OMP=""
if echo 'int main(void){return 0;}' | "$CC" -fopenmp -x c - -o "$OUT/.omp_probe" >/dev/null 2>&1; then
    OMP="-fopenmp"
fi
rm -f "$OUT/.omp_probe"

# An object is stale when it is missing or older than any file in its
# dependency list (the source and every header it included).
stale() {
    local obj=$1 dep=$2 f
    [ -f "$obj" ] && [ -f "$dep" ] || return 0
    for f in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$dep"); do
        [ "$f" -nt "$obj" ] && return 0
    done
    return 1
}

status=0
objs=()
for src in ${FUZZ_LIB_SRC:-src/*/*.c}; do
    [ -f "$src" ] || continue
    base=${src//\//_}
    obj="$OUT/obj/${base%.c}.o"
    if stale "$obj" "${obj%.o}.d"; then
        if ! nice "$CC" $CFLAGS $OMP $SAN -fsanitize=fuzzer-no-link -MMD -MF "${obj%.o}.d" -c "$src" -o "$obj" 2>"$OUT/obj/${base%.c}.err"; then
            echo "fuzz: library source $src does not compile:" >&2
            cat "$OUT/obj/${base%.c}.err" >&2
            exit 1
        fi
    fi
    objs+=("$obj")
done

if [ $# -gt 0 ]; then
    targets=()
    for t in "$@"; do targets+=("fuzz/${t%.c}.c"); done
else
    targets=(fuzz/fuzz_*.c)
fi

for src in "${targets[@]}"; do
    [ -f "$src" ] || { echo "fuzz: no target $src" >&2; status=1; continue; }
    name=$(basename "$src" .c)
    short=${name#fuzz_}
    bin="$OUT/$name"
    log="$OUT/$name.log"
    if ! nice "$CC" $CFLAGS $OMP $SAN -fsanitize=fuzzer "$src" "${objs[@]}" -o "$bin" $LIBS >"$log" 2>&1; then
        echo "$name: BUILD FAILED (see $log)"
        status=1
        continue
    fi
    if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then
        echo "$name: built $bin"
        continue
    fi
    scratch="$OUT/corpus/$short"
    art="$OUT/artifacts/$name"
    rm -rf "$scratch" "$art"
    mkdir -p "$scratch" "$art"
    if [ -d "fuzz/corpus/$short" ]; then
        cp -r "fuzz/corpus/$short/." "$scratch/"
    fi
    dict=()
    [ -f "fuzz/$name.dict" ] && dict=("-dict=fuzz/$name.dict")
    nice "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art/" "${dict[@]}" "$scratch" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | sed 's/cov: //')
    found=$(ls "$art" 2>/dev/null | head -1)
    if [ $rc -ne 0 ] || [ -n "$found" ]; then
        echo "$name: FAILED (exit $rc${found:+, input $art/$found}; log $log)"
        grep -m1 -E 'ERROR: |runtime error|broken promise|deadly signal' "$log" | sed 's/^/    /'
        status=1
    else
        echo "$name: ok (${runs:-?} runs in ${FUZZ_SECONDS} s, cov ${cov:-?}, corpus $(ls "$scratch" | wc -l) inputs)"
    fi
done
exit $status
