#!/usr/bin/env bash
# Benchmarks unionfuse against kernel overlayfs, fuse-overlayfs (when it can
# be installed) and the bare lower directories. Prints figures and ratios;
# there is no pass/fail.
#
#   sudo bench/run.sh
#
# Environment (defaults in brackets):
#   BENCH_FILES    files in the image layer, split over 2 lowers [100000]
#   BENCH_DIRS     directories holding them [BENCH_FILES / 20]
#   BENCH_BIGDIR   entries of the one big directory for `ls -f` [BENCH_FILES]
#   BENCH_BIG_MB   size of the file for sequential/random reads [1024]
#   BENCH_FIO_SECS seconds per fio run [10]
#   BENCH_CYCLES   mount/unmount cycles [20]
#   BENCH_TAR_FILES files in the tarball unpacked onto each mount [20000]
#   BENCH_TIMEOUT  seconds any one measurement may take [300]
#   BENCH_TMPFS=1  skip the ext4 loop image and use tmpfs
#   UNIONFUSE      a unionfuse binary to use instead of building one
#
# The layers live on a journaled ext4 image on a loop device (the root
# filesystem here is ext4 without a journal, which distorts creates), or on
# tmpfs when that fails; the script says which. Needs root (loop devices,
# overlayfs, drop_caches).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ "$(id -u)" -eq 0 ] || die "needs root (loop device, overlayfs mounts, drop_caches)"

FILES=${BENCH_FILES:-100000}
DIRS=${BENCH_DIRS:-$((FILES / 20))}
[ "$DIRS" -ge 1 ] || DIRS=1
BIGDIR=${BENCH_BIGDIR:-$FILES}
BIG_MB=${BENCH_BIG_MB:-1024}
FIO_SECS=${BENCH_FIO_SECS:-10}
CYCLES=${BENCH_CYCLES:-20}
TAR_FILES=${BENCH_TAR_FILES:-20000}
TMO=${BENCH_TIMEOUT:-300}

ensure_cargo
ensure_fuse
have_fio=1
command -v fio >/dev/null 2>&1 || (ensure_commands fio:fio) || have_fio=0
command -v fio >/dev/null 2>&1 || have_fio=0
have_fov=1
command -v fuse-overlayfs >/dev/null 2>&1 || (ensure_commands fuse-overlayfs:fuse-overlayfs) || have_fov=0
command -v fuse-overlayfs >/dev/null 2>&1 || have_fov=0

if [ -n "${UNIONFUSE:-}" ]; then
    UF=$UNIONFUSE
else
    echo "==> cargo build --release"
    cargo build --release --quiet
    UF=$PWD/target/release/unionfuse
fi
[ -x "$UF" ] || die "no binary at $UF"

work=$(mktemp -d /tmp/unionfuse-bench.XXXXXX)
loopdev=
fsroot=$work/fs

cleanup() {
    local rc=$?
    set +e
    unmount_matching "$work/"
    if mountpoint -q "$fsroot" 2>/dev/null; then
        umount "$fsroot" 2>/dev/null || umount -l "$fsroot"
    fi
    [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Backing filesystem
# ---------------------------------------------------------------------------
mkdir -p "$fsroot"
# Room for the big file and its copy-up, the small files (a block each,
# plus what the write workloads copy or unpack), and slack.
img_mb=$((2 * BIG_MB + (FILES * 4 + BIGDIR + TAR_FILES * 12) / 1024 + 1024))
inodes=$((FILES + DIRS + BIGDIR + 3 * TAR_FILES + 50000))
backing=
if [ "${BENCH_TMPFS:-0}" != 1 ]; then
    if truncate -s "${img_mb}M" "$work/disk.img" &&
        mkfs.ext4 -q -F -N "$inodes" -E lazy_itable_init=0,lazy_journal_init=0 "$work/disk.img" &&
        loopdev=$(losetup -f --show --direct-io=on "$work/disk.img" 2>/dev/null ||
            losetup -f --show "$work/disk.img") &&
        mount -t ext4 "$loopdev" "$fsroot"; then
        backing="journaled ext4 on $loopdev (${img_mb} MiB sparse image in /tmp)"
    else
        say "ext4 loop image failed; falling back to tmpfs"
        [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
        loopdev=
        rm -f "$work/disk.img"
    fi
fi
if [ -z "$backing" ]; then
    mount -t tmpfs -o "size=${img_mb}m,nr_inodes=$((inodes * 2))" tmpfs "$fsroot"
    backing="tmpfs (${img_mb} MiB; page cache only, so 'cold' figures are not disk-cold)"
fi

L1=$fsroot/lower1
L2=$fsroot/lower2
mkdir -p "$L1" "$L2"

echo "==> generating layers: $FILES files in $DIRS dirs, a $BIGDIR-entry dir, a $BIG_MB MiB file"
t0=$(date +%s%N)
# Files alternate between the lowers (1 in 3 in the top one), so most
# directories exist in both and are merged; the big dir is split in half.
perl -e '
    my ($l1, $l2, $files, $dirs, $big) = @ARGV;
    my %made;
    for my $i (0 .. $files - 1) {
        my $j = $i % $dirs;
        my $top = ($i % 3 == 0) ? $l1 : $l2;
        my $t = int($j / 100);
        my $d = "$top/t$t/d$j";
        unless ($made{$d}) {
            mkdir "$top/t$t"; mkdir $d or die "mkdir $d: $!"; $made{$d} = 1;
        }
        open(my $fh, ">", "$d/f$i") or die "create $d/f$i: $!";
        print $fh "file $i\n";
        close($fh);
    }
    mkdir "$l1/big"; mkdir "$l2/big";
    for my $i (0 .. $big - 1) {
        my $top = ($i % 2 == 0) ? $l1 : $l2;
        open(my $fh, ">", "$top/big/e$i") or die "create e$i: $!";
        close($fh);
    }
' "$L1" "$L2" "$FILES" "$DIRS" "$BIGDIR"
dd if=/dev/urandom of="$L2/bigfile" bs=1M count="$BIG_MB" status=none
# A tarball to unpack onto each mount (create-heavy, like `docker build`).
mkdir -p "$work/tarsrc"
perl -e '
    my ($root, $n) = @ARGV;
    for my $i (0 .. $n - 1) {
        my $d = "$root/p" . int($i / 100);
        mkdir $d;
        open(my $fh, ">", "$d/s$i.c") or die "create: $!";
        print $fh "int f$i(void) { return $i; }\n";
        close($fh);
    }
' "$work/tarsrc" "$TAR_FILES"
tar -C "$work/tarsrc" -cf "$work/src.tar" .
rm -rf "$work/tarsrc"
sync
echo "    took $(( ($(date +%s%N) - t0) / 1000000 )) ms"

# ---------------------------------------------------------------------------
# Mounting each candidate
# ---------------------------------------------------------------------------
MNT=$work/mnt
mkdir -p "$MNT"

# fresh_upper NAME: an empty upper and work dir on the backing filesystem.
fresh_upper() {
    rm -rf "$fsroot/upper-$1" "$fsroot/work-$1"
    mkdir -p "$fsroot/upper-$1" "$fsroot/work-$1"
    export UP=$fsroot/upper-$1 WK=$fsroot/work-$1
}

do_mount() {
    case $1 in
    kernel)
        mount -t overlay overlay -o "lowerdir=$L1:$L2,upperdir=$UP,workdir=$WK" "$MNT"
        ;;
    unionfuse)
        "$UF" mount --lower "$L1" --lower "$L2" --upper "$UP" --work "$WK" "$MNT"
        ;;
    fuse-overlayfs)
        fuse-overlayfs -o "lowerdir=$L1:$L2,upperdir=$UP,workdir=$WK" "$MNT"
        # fuse-overlayfs may return before it serves; wait for the mount.
        local n=0
        until mountpoint -q "$MNT" || [ $n -ge 100 ]; do
            sleep 0.05
            n=$((n + 1))
        done
        ;;
    esac
}

do_umount() {
    case $1 in
    kernel) umount "$MNT" ;;
    unionfuse) "$UF" umount "$MNT" ;;
    fuse-overlayfs) fusermount3 -u "$MNT" ;;
    esac
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# Results: R[op|candidate] = figure (a number, or a word when it failed).
declare -A R

# timed OUTVAR CMD...: runs CMD with the timeout; stores seconds (3 decimals)
# or "fail"/"timeout".
timed() {
    local __var=$1 t0 t1 rc=0
    shift
    t0=$(date +%s%N)
    timeout --kill-after=10 "$TMO" "$@" >/dev/null 2>"$work/err" || rc=$?
    t1=$(date +%s%N)
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        printf -v "$__var" timeout
    elif [ "$rc" -ne 0 ]; then
        say "failed ($rc): $* : $(head -c 300 "$work/err")"
        printf -v "$__var" fail
    else
        printf -v "$__var" '%d.%03d' $(((t1 - t0) / 1000000000)) $((((t1 - t0) / 1000000) % 1000))
    fi
}


# fio_iops FILE: random 4k read IOPS (or a word).
fio_iops() {
    local out
    if ! out=$(timeout --kill-after=10 "$((FIO_SECS + 60))" fio --name=r --rw=randread --bs=4k \
        --size="${BIG_MB}M" --runtime="$FIO_SECS" --time_based --ioengine=psync \
        --numjobs=2 --group_reporting --readonly --minimal --filename="$1" 2>"$work/err"); then
        say "fio failed: $(head -c 300 "$work/err")"
        echo fail
        return
    fi
    printf '%s\n' "$out" | tail -n1 | cut -d';' -f8
}

# measure NAME ROOT...: the read workloads over ROOT (one or more dirs that
# together make the tree: the two lowers for "native", else the mount).
measure() {
    local name=$1 v
    shift
    local -a roots=("$@") bigdirs=()
    local r bigfile
    for r in "${roots[@]}"; do bigdirs+=("$r/big"); done
    if [ "$name" = native ]; then bigfile=$L2/bigfile; else bigfile=${roots[0]}/bigfile; fi

    echo "    $name: tree walk (cold, warm)"
    drop_caches
    timed v find "${roots[@]}" -printf '%s\n'
    R["walk_cold|$name"]=$v
    timed v find "${roots[@]}" -printf '%s\n'
    R["walk_warm|$name"]=$v

    echo "    $name: big readdir (cold, warm)"
    drop_caches
    timed v ls -f "${bigdirs[@]}"
    R["readdir_cold|$name"]=$v
    timed v ls -f "${bigdirs[@]}"
    R["readdir_warm|$name"]=$v

    echo "    $name: sequential read of $BIG_MB MiB (cold)"
    drop_caches
    timed v dd if="$bigfile" of=/dev/null bs=1M status=none
    if [[ $v =~ ^[0-9.]+$ ]]; then
        R["seq_mbs|$name"]=$(awk -v s="$v" -v m="$BIG_MB" 'BEGIN { printf "%.0f", m / s }')
    else
        R["seq_mbs|$name"]=$v
    fi

    if [ "$have_fio" = 1 ]; then
        echo "    $name: fio random 4k read, $FIO_SECS s, 2 jobs"
        drop_caches
        R["fio_iops|$name"]=$(fio_iops "$bigfile")
    fi
}

# measure_writes NAME: the write workloads on the mount (a fresh upper).
# t0, t1 and t2 are distinct lower subtrees of about FILES/50 files each.
measure_writes() {
    local name=$1 v
    echo "    $name: unpack a $TAR_FILES-file tarball"
    drop_caches
    timed v sh -c "mkdir '$MNT/untar' && tar -C '$MNT/untar' -xf '$work/src.tar' && sync -f '$MNT/untar'"
    R["untar|$name"]=$v
    echo "    $name: chmod every file of a lower subtree (metadata copy-up)"
    drop_caches
    timed v find "$MNT/t0" -type f -exec chmod 600 {} +
    R["chmod_tree|$name"]=$v
    echo "    $name: rm -rf a lower subtree (whiteouts)"
    drop_caches
    timed v rm -rf "$MNT/t1"
    R["rm_tree|$name"]=$v
    echo "    $name: mv a lower subtree"
    drop_caches
    timed v mv "$MNT/t2" "$MNT/t2.moved"
    R["mv_tree|$name"]=$v
    echo "    $name: append a byte to the $BIG_MB MiB lower file (copy-up)"
    drop_caches
    timed v sh -c "echo x >> '$MNT/bigfile'"
    R["copyup_big|$name"]=$v
}

# cycles NAME: mean milliseconds per mount + unmount over CYCLES cycles.
cycles() {
    local name=$1 t0 t1
    t0=$(date +%s%N)
    # shellcheck disable=SC2016 # expanded by the child bash
    if timeout "$TMO" bash -c 'for ((i = 0; i < $2; i++)); do
            do_mount "$1" && do_umount "$1" || { echo "cycle $i failed" >&2; exit 1; }
        done' _ "$name" "$CYCLES" >/dev/null 2>"$work/err"; then
        t1=$(date +%s%N)
        R["cycle_ms|$name"]=$(((t1 - t0) / 1000000 / CYCLES))
    else
        say "$name mount/unmount cycles failed: $(head -c 300 "$work/err")"
        unmount_matching "$MNT"
        R["cycle_ms|$name"]=fail
    fi
}

# Mounting runs under `timeout`, in a child bash: hand it what it needs.
export -f do_mount do_umount
export L1 L2 MNT UF

candidates=(kernel unionfuse)
[ "$have_fov" = 1 ] && candidates+=(fuse-overlayfs)

bench_start=$SECONDS
echo "==> backing filesystem: $backing"
echo "==> native (the lower directories directly)"
measure native "$L1" "$L2"

for c in "${candidates[@]}"; do
    echo "==> $c"
    fresh_upper "$c"
    # shellcheck disable=SC2016 # expanded by the child bash
    if ! timeout 60 bash -c 'do_mount "$1"' _ "$c" 2>"$work/err"; then
        say "$c: mount failed: $(head -c 300 "$work/err")"
        unmount_matching "$MNT"
        continue
    fi
    measure "$c" "$MNT"
    measure_writes "$c"
    do_umount "$c" || unmount_matching "$MNT"
    echo "    $c: $CYCLES mount/unmount cycles"
    fresh_upper "$c"
    cycles "$c"
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
ops=(walk_cold walk_warm readdir_cold readdir_warm seq_mbs)
[ "$have_fio" = 1 ] && ops+=(fio_iops)
ops+=(untar chmod_tree rm_tree mv_tree copyup_big cycle_ms)
declare -A label=(
    [walk_cold]="tree walk, cold (s)"
    [walk_warm]="tree walk, warm (s)"
    [readdir_cold]="ls -f big dir, cold (s)"
    [readdir_warm]="ls -f big dir, warm (s)"
    [seq_mbs]="seq read 1M blocks (MB/s)"
    [fio_iops]="rand 4k read (IOPS)"
    [untar]="untar $TAR_FILES files (s)"
    [chmod_tree]="chmod lower subtree (s)"
    [rm_tree]="rm -rf lower subtree (s)"
    [mv_tree]="mv lower subtree (s)"
    [copyup_big]="copy-up $BIG_MB MiB file (s)"
    [cycle_ms]="mount+umount (ms/cycle)"
)

cell() { echo "${R["$1|$2"]:--}"; }

echo
echo "unionfuse benchmark: $FILES files in $DIRS dirs over 2 lowers, ${BIGDIR}-entry dir, $BIG_MB MiB file"
echo "backing: $backing; $(nproc) cores; kernel $(uname -r)"
[ "$have_fio" = 1 ] || echo "fio: not installed, random read skipped"
[ "$have_fov" = 1 ] || echo "fuse-overlayfs: not installed, column empty"
echo "ratio = unionfuse / kernel overlayfs (times: lower is better; MB/s and IOPS: higher is better)"
echo "cold = right after drop_caches; rand 4k read is buffered (psync, page cache allowed), starting cold"
echo
printf '%-26s %10s %10s %10s %14s %8s\n' operation native kernel unionfuse fuse-overlayfs ratio
printf '%-26s %10s %10s %10s %14s %8s\n' -------------------------- ---------- ---------- ---------- -------------- --------
for op in "${ops[@]}"; do
    k=$(cell "$op" kernel)
    u=$(cell "$op" unionfuse)
    ratio=-
    if [[ $k =~ ^[0-9.]+$ && $u =~ ^[0-9.]+$ ]]; then
        ratio=$(awk -v u="$u" -v k="$k" 'BEGIN { if (k > 0) printf "%.2f", u / k; else print "-" }')
    fi
    n=$(cell "$op" native)
    case $op in cycle_ms | untar | chmod_tree | rm_tree | mv_tree | copyup_big) n=n/a ;; esac
    printf '%-26s %10s %10s %10s %14s %8s\n' "${label[$op]}" "$n" "$k" "$u" "$(cell "$op" fuse-overlayfs)" "$ratio"
done
echo
echo "measured in $((SECONDS - bench_start)) s (plus setup)"
