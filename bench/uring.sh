#!/usr/bin/env bash
# What one FUSE request round trip costs over classic /dev/fuse read/write
# and over FUSE-over-io_uring, on the same tiny filesystem (bench/uring-probe
# serves it both ways). Workloads, each operation one round trip: fstat of a
# file whose attributes are never cached (a GETATTR each), with 1 and 2
# parallel clients, and 4 KiB pread of a direct-I/O file (a READ each).
# Medians (and ranges) of interleaved repetitions, the order of the two
# transports alternating; ratios io_uring/classic. The probe checks that
# every operation cost exactly one request ("req/op"), and one extra,
# untimed run samples how many requests were answered on the CPU their
# caller sleeps on. There is no pass/fail. Findings: bench/uring.md.
#
#   sudo bench/uring.sh [--reps N] [--secs S] [--pinned] [--rt] [--unionfuse]
#
#   --reps N     repetitions of every measurement [7]
#   --secs S     seconds each measurement runs, after 0.2 s of warm-up [1]
#   --pinned     also run every workload with client i pinned to CPU i
#   --rt         run clients and daemons SCHED_FIFO (chrt -f 10), so that
#                other load on the machine cannot get between a request and
#                its answer: the figures are then the transports' own cost.
#                The kernel's RT throttling leaves other tasks 5% of each CPU
#                meanwhile
#   --unionfuse  also run the stat loop on a unionfuse mount of one lower
#                layer with --cache-timeout 0 (a release build, or the
#                binary UNIONFUSE names)
#
# Needs root (mount(2), /sys/module/fuse/parameters/enable_uring, which is
# set to Y while it runs and put back as it was at exit) and a kernel built
# with CONFIG_FUSE_IO_URING (6.14 or later).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

REPS=7
SECS=1
PINNED=0
RT=0
WITH_UF=0
while [ $# -gt 0 ]; do
    case $1 in
    --reps)
        [ $# -ge 2 ] || die "--reps needs a value"
        [[ $2 =~ ^[1-9][0-9]{0,2}$ ]] || die "--reps: '$2' is not a number from 1 to 999"
        REPS=$2
        shift 2
        ;;
    --secs)
        [ $# -ge 2 ] || die "--secs needs a value"
        [[ $2 =~ ^([0-9]{1,3})(\.[0-9]+)?$ ]] && awk -v s="$2" 'BEGIN { exit !(s >= 0.05) }' ||
            die "--secs: '$2' is not seconds from 0.05 to 999"
        SECS=$2
        shift 2
        ;;
    --pinned) PINNED=1 && shift ;;
    --rt) RT=1 && shift ;;
    --unionfuse) WITH_UF=1 && shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "needs root (mount(2), /sys/module/fuse/parameters/enable_uring)"
PARAM=/sys/module/fuse/parameters/enable_uring
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -f "$PARAM" ] || die "$PARAM is missing: this kernel has no FUSE-over-io_uring (CONFIG_FUSE_IO_URING, 6.14 or later)"
ensure_cargo
ensure_fuse
cargo build --release --quiet --manifest-path bench/uring-probe/Cargo.toml
PROBE=$PWD/bench/uring-probe/target/release/uring-probe
[ "$WITH_UF" = 1 ] && release_binary
sched=()
if [ "$RT" = 1 ]; then
    command -v chrt >/dev/null || die "--rt needs chrt (util-linux)"
    sched=(chrt -f 10)
fi

work=$(mktemp -d /tmp/unionfuse-uring.XXXXXX)
prev=$(cat "$PARAM")
cleanup() {
    local rc=$?
    set +e
    unmount_matching "$work/"
    [ "$(cat "$PARAM")" = "$prev" ] || echo "$prev" >"$PARAM"
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
# Only connections whose daemon asks for io_uring in its INIT reply use it;
# other FUSE mounts on the machine are unaffected.
echo Y >"$PARAM"

mkdir -p "$work/mnt" "$work/lower" "$work/ufmnt"
head -c 1048576 /dev/zero >"$work/lower/file"
: >"$work/results"

passes=(free)
[ "$PINNED" = 1 ] && passes+=(pinned)

# record PASS: appends the RESULT lines of stdin to the results as
# "PASS MODE OP CLIENTS US REQS".
record() {
    awk -v pass="$1" '/^RESULT / {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        print pass, f["mode"], f["op"], f["clients"], f["us"], f["reqs"]
    }' >>"$work/results"
}

uf_getattrs() {
    "$UF" stats --json "$work/ufmnt" | grep -o '"op":"getattr","count":[0-9]*' | grep -o '[0-9]*$' || echo 0
}

if [ "$WITH_UF" = 1 ]; then
    "${sched[@]}" "$UF" mount --lower "$work/lower" --cache-timeout 0 "$work/ufmnt" ||
        die "unionfuse did not mount"
fi

say "$REPS repetitions of ${SECS}s per workload (${passes[*]}$([ "$RT" = 1 ] && echo ", SCHED_FIFO")); the machine's load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPS"); do
    if [ $((rep % 2)) = 1 ]; then order=(classic uring); else order=(uring classic); fi
    for pass in "${passes[@]}"; do
        pin=()
        [ "$pass" = pinned ] && pin=(--pin-clients)
        for mode in "${order[@]}"; do
            timeout --kill-after=10 300 "${sched[@]}" "$PROBE" bench --mode "$mode" --mnt "$work/mnt" \
                --secs "$SECS" --work stat:1,stat:2,read:1 "${pin[@]}" | record "$pass" ||
                die "the $mode probe failed (repetition $rep)"
        done
        if [ "$WITH_UF" = 1 ]; then
            for c in 1 2; do
                before=$(uf_getattrs)
                out=$("${sched[@]}" "$PROBE" load --path "$work/ufmnt/file" --op stat --clients "$c" \
                    --secs "$SECS" "${pin[@]}") || die "the stat loop on unionfuse failed"
                after=$(uf_getattrs)
                printf '%s\n' "$out" |
                    sed "s/ mode=external / mode=unionfuse /; s/ reqs=- / reqs=RQ /" |
                    awk -v d=$((after - before)) '{ n = $NF; sub(/ops=/, "", n);
                        sub(/RQ/, sprintf("%.3f", d / n)); print }' | record "$pass"
            done
        fi
    done
    say "repetition $rep of $REPS done"
done
[ "$WITH_UF" = 1 ] && "$UF" umount "$work/ufmnt"

# One more, untimed run per transport that samples where requests are
# answered (the sampling reads /proc, so it stays out of the figures).
: >"$work/placement"
for pass in "${passes[@]}"; do
    pin=()
    [ "$pass" = pinned ] && pin=(--pin-clients)
    for mode in classic uring; do
        timeout --kill-after=10 300 "${sched[@]}" "$PROBE" bench --mode "$mode" --mnt "$work/mnt" \
            --secs "$SECS" --work stat:1,stat:2,read:1 --placement "${pin[@]}" |
            awk -v pass="$pass" '/^PLACEMENT / {
                for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                print pass, f["mode"], f["op"], f["clients"], f["samecpu"] }' >>"$work/placement" ||
            die "the $mode probe failed (placement run)"
    done
done

# rowname PASS OP CLIENTS
rowname() {
    local n="$2, $3 client"
    [ "$2" = read ] && n="4 KiB pread, $3 client"
    [ "$3" = 1 ] || n="${n}s"
    [ "$1" = pinned ] && n="$n, pinned"
    printf '%s' "$n"
}

# stat PASS MODE OP CLIENTS FIELD: "median min max" of FIELD (5: us, 6: reqs).
stat() {
    awk -v p="$1" -v m="$2" -v o="$3" -v c="$4" -v f="$5" \
        '$1 == p && $2 == m && $3 == o && $4 == c { print $f }' "$work/results" |
        sort -g | awk '{ a[NR] = $1 } END {
            if (NR == 0) { print "- - -"; exit }
            med = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            print med, a[1], a[NR] }'
}

echo
echo "Microseconds per operation (per client), medians of $REPS; ranges in brackets$([ "$RT" = 1 ] && echo "; SCHED_FIFO")"
echo
hdr="| workload | classic | io_uring | io_uring/classic | req/op |"
sep="|---|---:|---:|---:|---:|"
if [ "$WITH_UF" = 1 ]; then
    hdr="$hdr unionfuse (classic, fuser) |"
    sep="$sep---:|"
fi
echo "$hdr"
echo "$sep"
for pass in "${passes[@]}"; do
    for w in "stat 1" "stat 2" "read 1"; do
        read -r op c <<<"$w"
        read -r cm clo chi < <(stat "$pass" classic "$op" "$c" 5)
        read -r um ulo uhi < <(stat "$pass" uring "$op" "$c" 5)
        read -r cr _ _ < <(stat "$pass" classic "$op" "$c" 6)
        read -r ur _ _ < <(stat "$pass" uring "$op" "$c" 6)
        name=$(rowname "$pass" "$op" "$c")
        row=$(awk -v n="$name" -v cm="$cm" -v clo="$clo" -v chi="$chi" -v um="$um" \
            -v ulo="$ulo" -v uhi="$uhi" -v cr="$cr" -v ur="$ur" 'BEGIN {
            printf "| %s | %.1f [%.1f–%.1f] | %.1f [%.1f–%.1f] | %.2f | %.3f / %.3f |",
                n, cm, clo, chi, um, ulo, uhi, um / cm, cr, ur }')
        if [ "$WITH_UF" = 1 ]; then
            if [ "$op" = stat ]; then
                read -r fm flo fhi < <(stat "$pass" unionfuse stat "$c" 5)
                read -r fr _ _ < <(stat "$pass" unionfuse stat "$c" 6)
                row="$row $(awk -v m="$fm" -v lo="$flo" -v hi="$fhi" -v r="$fr" \
                    'BEGIN { printf "%.1f [%.1f–%.1f], %.3f req/op |", m, lo, hi, r }')"
            else
                row="$row – |"
            fi
        fi
        echo "$row"
    done
done
echo
echo "req/op: requests the daemon saw per operation issued (classic / io_uring); 1.000 means every operation was one round trip."
echo
echo "Requests answered on the CPU their caller sleeps on (sampled, one extra run)"
echo
echo "| workload | classic | io_uring |"
echo "|---|---:|---:|"
for pass in "${passes[@]}"; do
    for w in "stat 1" "stat 2" "read 1"; do
        read -r op c <<<"$w"
        same() { awk -v p="$pass" -v m="$1" -v o="$op" -v c="$c" \
            '$1 == p && $2 == m && $3 == o && $4 == c { printf "%.0f%%", $5 * 100 }' "$work/placement"; }
        name=$(rowname "$pass" "$op" "$c")
        echo "| $name | $(same classic) | $(same uring) |"
    done
done
