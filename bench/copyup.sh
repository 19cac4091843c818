#!/usr/bin/env bash
# What durable copy-up costs: first writes to many small lower files and to
# one big one, on unionfuse (copies synced before they get their name; the
# name is synced by a later fsync), unionfuse --volatile (no sync), and kernel
# overlayfs with and without `volatile` (the kernel syncs copied-up data
# too). Layers on a journaled ext4 loop image; medians of BENCH_REPS
# interleaved repetitions, each on a fresh upper, each starting with
# another configuration, then `cp` plus fsync of the big file as the floor
# for a durable copy. Prints figures and ratios; there is no pass/fail.
#
#   sudo bench/copyup.sh
#
# Environment: BENCH_SMALL files of 4 KiB [2000], BENCH_BIG_MB [256],
# BENCH_REPS [3], UNIONFUSE (a binary to use instead of building one).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ "$(id -u)" -eq 0 ] || die "needs root (loop device, overlayfs mounts)"
SMALL=${BENCH_SMALL:-2000}
BIG_MB=${BENCH_BIG_MB:-256}
REPS=${BENCH_REPS:-3}
ensure_cargo
ensure_fuse
release_binary

work=$(mktemp -d /tmp/unionfuse-copyup.XXXXXX)
fs=$work/fs
cleanup() {
    local rc=$?
    set +e
    unmount_matching "$work/"
    # A daemon whose mount was just cut holds the upper a moment longer.
    for _ in $(seq 40); do
        mountpoint -q "$fs" || break
        umount "$fs" 2>/dev/null || sleep 0.25
    done
    mountpoint -q "$fs" && umount -l "$fs"
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT

mkdir -p "$fs"
truncate -s "$((3 * BIG_MB + SMALL * 16 / 1024 + 512))M" "$work/disk.img"
# Initialised up front: a lazily initialised image writes in the
# background while the first measurements run.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/disk.img"
mount -o loop "$work/disk.img" "$fs"
lower=$fs/lower mnt=$work/mnt
mkdir -p "$lower" "$mnt"
perl -e '
    my ($root, $n) = @ARGV;
    my $block = "x" x 4096;
    for my $i (0 .. $n - 1) {
        my $d = "$root/d" . int($i / 100);
        mkdir $d;
        open(my $fh, ">", "$d/f$i") or die "create: $!";
        print $fh $block;
        close($fh);
    }
' "$lower" "$SMALL"
head -c "$((BIG_MB << 20))" /dev/urandom >"$lower/big"
sync

# Appends one byte to every small file (one copy-up each), in one process.
append_small() {
    perl -e '
        for my $f (glob("$ARGV[0]/d*/f*")) {
            open(my $fh, ">>", $f) or die "$f: $!";
            print $fh "+";
            close($fh);
        }
    ' "$1"
}

ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@"
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}

fresh_upper() {
    rm -rf "$fs/upper" "$fs/work"
    mkdir "$fs/upper" "$fs/work"
    sync
}

mount_cfg() {
    case $1 in
    unionfuse) "$UF" mount --lower "$lower" --upper "$fs/upper" --work "$fs/work" "$mnt" ;;
    unionfuse-volatile) "$UF" mount --volatile --lower "$lower" --upper "$fs/upper" --work "$fs/work" "$mnt" ;;
    overlayfs) mount -t overlay overlay -o "lowerdir=$lower,upperdir=$fs/upper,workdir=$fs/work" "$mnt" ;;
    overlayfs-volatile) mount -t overlay overlay -o "lowerdir=$lower,upperdir=$fs/upper,workdir=$fs/work,volatile" "$mnt" ;;
    esac
}

unmount_cfg() {
    case $1 in
    unionfuse*) "$UF" umount "$mnt" ;;
    *) umount "$mnt" ;;
    esac
}

cfgs=(unionfuse unionfuse-volatile overlayfs overlayfs-volatile)
declare -A R
for ((rep = 0; rep < REPS; rep++)); do
    # Each repetition starts with another configuration: the first after
    # the setup (or after the previous repetition) meets a colder disk.
    for ((i = 0; i < ${#cfgs[@]}; i++)); do
        c=${cfgs[$(((i + rep) % ${#cfgs[@]}))]}
        fresh_upper
        mount_cfg "$c"
        R["small|$c|$rep"]=$(ms append_small "$mnt")
        R["big|$c|$rep"]=$(ms sh -c "printf + >>'$mnt/big'")
        unmount_cfg "$c"
    done
done
# `cp` of the big file plus its fsync: the floor for a durable copy.
cp_ms=()
for ((rep = 0; rep < REPS; rep++)); do
    rm -f "$fs/copy"
    sync
    cp_ms+=("$(ms sh -c "cp '$lower/big' '$fs/copy' && sync '$fs/copy'")")
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo
echo "copy-up cost: $SMALL files of 4 KiB and one $BIG_MB MiB file, journaled ext4 loop image, $(nproc) cores, median of $REPS"
printf '%-22s %14s %14s %12s\n' "" "small (ms)" "big (ms)" "vs overlayfs"
for c in "${cfgs[@]}"; do
    s=() b=()
    for ((rep = 0; rep < REPS; rep++)); do
        s+=("${R["small|$c|$rep"]}")
        b+=("${R["big|$c|$rep"]}")
    done
    ms_s=$(median "${s[@]}") ms_b=$(median "${b[@]}")
    R["med_small|$c"]=$ms_s
    R["med_big|$c"]=$ms_b
    printf '%-22s %14s %14s\n' "$c" "$ms_s" "$ms_b"
done
printf '%-22s %14s %14s\n' "cp + fsync (big)" "" "$(median "${cp_ms[@]}")"
echo
awk -v a="${R["med_small|unionfuse"]}" -v b="${R["med_small|unionfuse-volatile"]}" \
    -v c="${R["med_big|unionfuse"]}" -v d="${R["med_big|unionfuse-volatile"]}" \
    -v e="${R["med_small|overlayfs"]}" -v f="${R["med_big|overlayfs"]}" \
    -v g="$(median "${cp_ms[@]}")" 'BEGIN {
    printf "durable / volatile unionfuse:   small %.2fx, big %.2fx\n", (b ? a / b : 0), (d ? c / d : 0)
    printf "unionfuse / kernel overlayfs:   small %.2fx, big %.2fx\n", (e ? a / e : 0), (f ? c / f : 0)
    printf "unionfuse big / (cp + fsync):   %.2fx\n", (g ? c / g : 0)
}'
