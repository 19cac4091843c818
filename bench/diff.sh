#!/usr/bin/env bash
# How `unionfuse diff` scales: with the size of the upper, not of the image.
# Builds an image of BENCH_FILES files (default 100000) and an upper with
# BENCH_CHANGES changes (default 100), then times `unionfuse diff` against a
# walk of the whole image (what a full-tree diff costs at the least), cold
# and warm. Prints figures and ratios; there is no pass/fail.
#
#   bench/diff.sh            (root: drops caches between runs)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

FILES=${BENCH_FILES:-100000}
CHANGES=${BENCH_CHANGES:-100}
ensure_cargo
ensure_fuse
release_binary

work=$(mktemp -d /tmp/unionfuse-diffbench.XXXXXX)
cleanup() {
    local rc=$?
    unmount_matching "$work/"
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT

lower=$work/lower upper=$work/upper mnt=$work/mnt
mkdir -p "$lower" "$upper" "$mnt"
echo "==> image: $FILES files"
perl -e '
    my ($root, $n) = @ARGV;
    for my $i (0 .. $n - 1) {
        my $d = "$root/d" . int($i / 100);
        mkdir $d;
        open(my $fh, ">", "$d/f$i") or die "create: $!";
        print $fh "file $i\n";
        close($fh);
    }
' "$lower" "$FILES"

echo "==> upper: $CHANGES changes through a mount"
"$UF" mount --lower "$lower" --upper "$upper" "$mnt"
for ((i = 0; i < CHANGES; i++)); do
    case $((i % 4)) in
    0) echo changed >"$mnt/d$i/f$((i * 100))" ;;
    1) rm "$mnt/d$i/f$((i * 100))" ;;
    2) echo new >"$mnt/d$i/new$i" ;;
    3) chmod 600 "$mnt/d$i/f$((i * 100))" ;;
    esac
done
"$UF" umount "$mnt"

drop() {
    sync
    if [ "$(id -u)" -eq 0 ]; then
        echo 3 >/proc/sys/vm/drop_caches
    fi
}
ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}

drop
diff_cold=$(ms "$UF" diff --upper "$upper" --lower "$lower")
diff_warm=$(ms "$UF" diff --upper "$upper" --lower "$lower")
drop
walk_cold=$(ms find "$lower" -printf '%s\n')
walk_warm=$(ms find "$lower" -printf '%s\n')
lines=$("$UF" diff --upper "$upper" --lower "$lower" | wc -l)

echo
echo "unionfuse diff: image $FILES files, upper $CHANGES changes ($lines diff lines); $(nproc) cores"
printf '%-32s %10s %10s\n' "" "cold ms" "warm ms"
printf '%-32s %10s %10s\n' "unionfuse diff (upper only)" "$diff_cold" "$diff_warm"
printf '%-32s %10s %10s\n' "walk of the image (find)" "$walk_cold" "$walk_warm"
awk -v a="$diff_cold" -v b="$walk_cold" -v c="$diff_warm" -v d="$walk_warm" \
    'BEGIN { printf "%-32s %10.3f %10.3f\n", "ratio diff / image walk", (b ? a / b : 0), (d ? c / d : 0) }'
