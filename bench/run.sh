#!/usr/bin/env bash
# Benchmarks the shapes users have, side by side in one run: native ext4
# (the limit), kernel overlayfs, fuse-overlayfs (when it can be installed),
# unionfuse as root (over /dev/fuse, and over io_uring where the kernel has
# it) and unionfuse as an ordinary user (through fusermount3, in a private
# mount namespace). Prints medians and ranges of interleaved
# repetitions, ratios to kernel overlayfs and to native, and the FUSE
# requests each unionfuse workload cost; writes the tables as Markdown and
# an SVG chart of the ratios to kernel overlayfs. There is no pass/fail.
#
#   sudo bench/run.sh [--quick] [--reps N] [--out FILE.md] [--no-user] [--no-uring]
#
#   --quick     small shapes, 10 mount cycles: finishes in a few minutes
#   --reps N    repetitions of every measurement [3]
#   --out FILE  the Markdown report [bench/results.md, or
#               bench/results-quick.md with --quick]; the chart goes beside
#               it with the extension .svg
#   --no-user   skip the unprivileged unionfuse column
#   --no-uring  skip the unionfuse column over io_uring (`mount --io-uring`)
#
# Environment overrides of the shapes (full / --quick):
#   BENCH_FILES     small files over two lowers [100000 / 3000]
#   BENCH_DIRS      directories holding them [10000 / 300]
#   BENCH_SYMLINKS  symlinks among them [2000 / 60]
#   BENCH_BIGDIR    entries of the directory merged from three lowers [50000 / 1500]
#   BENCH_GIT       files of the git checkout [6000 / 300]
#   BENCH_TAR       files of the tarball unpacked onto each mount [20000 / 800]
#   BENCH_BIG_MB    the lower file read with dd and fio [2048 / 64]
#   BENCH_FIO_MB    MiB each fio run reads or writes in 4k blocks [256 / 2]
#   BENCH_LARGE_MB  the lower file whose mode and times change [512 / 32]
#   BENCH_CC        C files of the project built with make -j2 [60 / 2]
#   BENCH_IMAGE     small files of the container image [3000 / 200]
#   BENCH_BINS      binaries of the container image [20 / 5]
#   BENCH_CYCLES    throwaway-root mount cycles [100 / 10]
#   BENCH_TIMEOUT   seconds any one measurement may take [600]
#   UNIONFUSE       a unionfuse binary to use instead of building one
#
# Everything lives on a journaled ext4 image on a loop device, generated
# with a fixed seed, and goes away at exit. Needs root (loop device,
# overlayfs, drop_caches); installs fio, fuse-overlayfs, git, gcc and make
# with apt-get when missing, and skips what it cannot install, saying so.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

[ "$(id -u)" -eq 0 ] || {
    echo "bench/run.sh: needs root (loop device, overlayfs mounts, drop_caches); run with sudo" >&2
    exit 1
}

QUICK=0 REPS=3 OUT= NO_USER=0 NO_URING=0 uring_was=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=${2:?--reps needs a number} && shift ;;
    --out) OUT=${2:?--out needs a file} && shift ;;
    --no-user) NO_USER=1 ;;
    --no-uring) NO_URING=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' && exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps needs a positive number"

if [ "$QUICK" = 1 ]; then
    d=(3000 300 60 1500 300 800 64 2 32 2 200 5 10)
    OUT=${OUT:-bench/results-quick.md}
else
    d=(100000 10000 2000 50000 6000 20000 2048 256 512 60 3000 20 100)
    OUT=${OUT:-bench/results.md}
fi
FILES=${BENCH_FILES:-${d[0]}}
DIRS=${BENCH_DIRS:-${d[1]}}
SYMLINKS=${BENCH_SYMLINKS:-${d[2]}}
BIGDIR=${BENCH_BIGDIR:-${d[3]}}
GITN=${BENCH_GIT:-${d[4]}}
TARN=${BENCH_TAR:-${d[5]}}
BIG_MB=${BENCH_BIG_MB:-${d[6]}}
FIO_MB=${BENCH_FIO_MB:-${d[7]}}
LARGE_MB=${BENCH_LARGE_MB:-${d[8]}}
CCN=${BENCH_CC:-${d[9]}}
IMAGEN=${BENCH_IMAGE:-${d[10]}}
BINS=${BENCH_BINS:-${d[11]}}
CYCLES=${BENCH_CYCLES:-${d[12]}}
TMO=${BENCH_TIMEOUT:-600}
[ "$DIRS" -ge 50 ] || DIRS=50
SVG=${OUT%.md}.svg

run_start=$SECONDS
notes=()
note() {
    notes+=("$*")
    say "$*"
}

# ---------------------------------------------------------------------------
# Tools: what is missing is installed, or its column/rows are skipped.
# ---------------------------------------------------------------------------
[ -n "${UNIONFUSE:-}" ] || ensure_cargo
ensure_fuse
ensure_commands mkfs.ext4:e2fsprogs losetup:mount perl:perl tar:tar \
    unshare:util-linux nsenter:util-linux setpriv:util-linux
# try CMD:PKG: installs PKG when CMD is missing; false if it still is.
try() { command -v "${1%%:*}" >/dev/null 2>&1 || (ensure_commands "$1") >/dev/null 2>&1 || true; command -v "${1%%:*}" >/dev/null 2>&1; }
have_fio=1 have_fov=1 have_git=1 have_cc=1
try fio:fio || { have_fio=0 && note "fio could not be installed: fio rows skipped"; }
try fuse-overlayfs:fuse-overlayfs || { have_fov=0 && note "fuse-overlayfs could not be installed: its column is empty"; }
try git:git || { have_git=0 && note "git could not be installed: git rows skipped"; }
{ try gcc:gcc && try make:make; } || { have_cc=0 && note "gcc/make could not be installed: the build row is skipped"; }

echo "==> release build" >&2
release_binary

work=$(mktemp -d /tmp/unionfuse-bench.XXXXXX)
chmod 755 "$work"
fs=$work/fs
loopdev=
nspid=
user=unionfuse-test

cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    [ -z "$uring_was" ] || echo "$uring_was" >/sys/module/fuse/parameters/enable_uring
    # The unprivileged mounts live in the private namespace: it goes away
    # with its last process, the holder and the daemons (whose argv holds
    # $work/bin/, the user's copy of the binary).
    if [ -n "$nspid" ]; then
        for pid in $(pgrep -f "$work/bin/unionfuse" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null; done
        kill -TERM "$nspid" 2>/dev/null
        wait "$nspid" 2>/dev/null
        sleep 0.2
        for pid in $(pgrep -f "$work/bin/unionfuse" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    fi
    unmount_matching "$work/"
    if mountpoint -q "$fs" 2>/dev/null; then
        umount "$fs" 2>/dev/null || { sleep 1 && umount "$fs"; } || umount -l "$fs"
    fi
    [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# The image: a journaled ext4 loop device holding every layer.
# ---------------------------------------------------------------------------
img_mb=$((2 * BIG_MB + 4 * LARGE_MB + 4 * FIO_MB + (FILES + BIGDIR + 3 * GITN + 3 * TARN + IMAGEN) * 12 / 1024 + 1024))
inodes=$((3 * (FILES + DIRS + SYMLINKS + BIGDIR + 2 * GITN + IMAGEN) + 4 * TARN + 100000))
mkdir -p "$fs"
truncate -s "${img_mb}M" "$work/disk.img"
mkfs.ext4 -q -F -N "$inodes" -E lazy_itable_init=0,lazy_journal_init=0 "$work/disk.img"
loopdev=$(losetup -f --show --direct-io=on "$work/disk.img" 2>/dev/null || losetup -f --show "$work/disk.img")
mount -t ext4 "$loopdev" "$fs"
chmod 755 "$fs"
L1=$fs/l1 L2=$fs/l2 L3=$fs/l3
U0=$fs/upper0 NATIVE=$fs/native
mkdir -p "$L1" "$L2" "$L3" "$U0" "$work/bin" "$work/lists" "$work/home"

t0=$SECONDS
echo "==> generating the image ($FILES files, $BIGDIR-entry merged dir, $BIG_MB MiB file) on $loopdev" >&2
# The tree: files in DIRS directories under 50 top directories, 1 in 3 in
# the top lower and the rest in the second (so most directories are
# merged), symlinks beside them; the upper holds new versions of 1% of
# them, whiteouts of 0.5% and 1% new files. big/ is split over the three
# lowers. Contents and times come from a fixed seed.
perl -e '
    use strict; use warnings;
    my ($l1, $l2, $l3, $u, $files, $dirs, $links, $big, $image, $cc) = @ARGV;
    srand(42);
    my %made;
    sub mkp { my $d = shift; return if $made{$d}; my $p = "";
        for (split m{/}, $d) { $p .= "$_/"; mkdir $p } $made{$d} = 1 }
    sub put { my ($f, $s) = @_; open(my $h, ">", $f) or die "$f: $!"; print $h $s; close $h }
    my $t = 1600000000;
    for my $i (0 .. $files - 1) {
        my $j = $i % $dirs;
        my $rel = "tree/t" . ($j % 50) . "/d$j";
        my $top = ($i % 3 == 0) ? $l1 : $l2;
        mkp("$top/$rel");
        put("$top/$rel/f$i", "file $i\n" x (1 + int(rand(40))));
        utime($t - int(rand(1e7)), $t - int(rand(1e7)), "$top/$rel/f$i");
        if ($i % 100 == 1) { mkp("$u/$rel"); put("$u/$rel/f$i", "upper $i\n") }
        elsif ($i % 200 == 2) { mkp("$u/$rel"); system("mknod", "$u/$rel/f$i", "c", "0", "0") == 0 or die }
        elsif ($i % 100 == 3) { mkp("$u/$rel"); put("$u/$rel/n$i", "new $i\n") }
    }
    for my $s (0 .. $links - 1) {
        my $j = ($s * 7) % $dirs;
        my $rel = "tree/t" . ($j % 50) . "/d$j";
        mkp("$l1/$rel");
        symlink("f" . ($j + $dirs * int(rand(int($files / $dirs)))), "$l1/$rel/s$s") or die;
    }
    for my $top ($l1, $l2, $l3) { mkp("$top/big") }
    for my $i (0 .. $big - 1) { put((($l1, $l2, $l3)[$i % 3]) . "/big/e$i", "") }
    # A container image: small files to read, binaries to run.
    for my $i (0 .. $image - 1) {
        my $d = "$l3/image/usr/share/p" . int($i / 100);
        mkp($d);
        put("$d/r$i", "resource $i\n" x (1 + int(rand(200))));
    }
    # A C project.
    mkp("$l3/proj");
    put("$l3/proj/common.h", "int unit_sum(int);\n" . join("", map { "int unit$_(int);\n" } 0 .. $cc - 1));
    for my $k (0 .. $cc - 1) {
        my $s = "#include \"common.h\"\n";
        for my $f (0 .. 39) {
            $s .= "static int g${f}(int x) { int a = x; for (int i = 0; i < x; i++) { a = a * 31 + i % (" . (3 + $f) . "); if (a & 1) a ^= i << 3; } return a; }\n";
        }
        $s .= "int unit$k(int x) { return " . join(" + ", map { "g$_(x + $_)" } 0 .. 39) . "; }\n";
        put("$l3/proj/u$k.c", $s);
    }
    put("$l3/proj/main.c", "#include \"common.h\"\nint main(void) { int s = 0;\n" .
        join("", map { " s += unit$_($_);\n" } 0 .. $cc - 1) . " return s == 42; }\n");
    put("$l3/proj/Makefile", "SRCS := \$(wildcard *.c)\nOBJS := \$(SRCS:.c=.o)\napp: \$(OBJS)\n\t\$(CC) -o \$@ \$(OBJS)\n%.o: %.c common.h\n\t\$(CC) -O2 -c -o \$@ \$<\nclean:\n\trm -f app *.o\n");
' "$L1" "$L2" "$L3" "$U0" "$FILES" "$DIRS" "$SYMLINKS" "$BIGDIR" "$IMAGEN" "$CCN"
mkdir -p "$L3/image/bin"
bins=(true ls cat env id uname date echo sort head tail wc basename dirname stat touch mkdir rm cp mv)
for b in "${bins[@]:0:BINS}"; do cp "$(type -P "$b")" "$L3/image/bin/$b"; done
# The big file (seeded, so the same bytes every run) and the large one.
perl -e 'srand(7); my $n = $ARGV[0] << 20; my $b = join("", map { chr(int(rand(256))) } 1 .. 65536);
    for (my $o = 0; $o < $n; $o += 65536) { print substr($b, ($o >> 16) % 4096, 65536 - ($o >> 16) % 4096), substr($b, 0, ($o >> 16) % 4096) }' \
    "$BIG_MB" >"$L2/bigfile"
head -c "$((LARGE_MB << 20))" "$L2/bigfile" >"$L1/large.bin"
if [ "$have_git" = 1 ]; then
    # A git checkout in the bottom lower: 50 files a directory.
    perl -e 'srand(3); my ($r, $n) = @ARGV;
        mkdir $r; mkdir "$r/src";
        for my $i (0 .. $n - 1) { my $d = "$r/src/m" . int($i / 50); mkdir $d;
            open(my $h, ">", "$d/f$i.c") or die; print $h "/* $i */\nint f$i(void) { return " . int(rand(1e6)) . "; }\n" x (1 + int(rand(30))); close $h }' \
        "$L3/repo" "$GITN"
    (
        cd "$L3/repo"
        export GIT_AUTHOR_DATE=@1600000000 GIT_COMMITTER_DATE=@1600000000 HOME=$work/home GIT_CONFIG_NOSYSTEM=1
        git init -q -b main . && git add -A &&
            git -c user.name=bench -c user.email=bench@localhost commit -q -m "generated checkout"
    )
fi
# The tarball: files with their own owners, modes and times.
perl -e 'srand(5); my ($r, $n) = @ARGV; my @modes = (0644, 0600, 0755, 0640, 0444); mkdir $r;
    for my $i (0 .. $n - 1) { my $d = "$r/p" . int($i / 100); mkdir $d;
        open(my $h, ">", "$d/s$i.c") or die; print $h "int s$i(void) { return $i; }\n" x (1 + int(rand(20))); close $h;
        chown(1000 + $i % 7, 100 + $i % 5, "$d/s$i.c"); chmod($modes[$i % 5], "$d/s$i.c");
        utime(1500000000 + $i, 1500000000 + int(rand(1e8)), "$d/s$i.c") }' "$fs/tarsrc" "$TARN"
tar --numeric-owner -C "$fs/tarsrc" -cf "$fs/src.tar" .
rm -rf "$fs/tarsrc"
chmod 644 "$fs/src.tar"
# The unprivileged column mounts the same layers, as its own: rootless
# container storage belongs to the user who runs it.
ensure_system_user "$user"
chown -R "$user:" "$L1" "$L2" "$L3" "$U0"
# Native: the merged view, copied once onto the same filesystem.
mkdir -p "$work/mnt/gen"
mount -t overlay overlay -o "lowerdir=$U0:$L1:$L2:$L3" "$work/mnt/gen"
cp -a "$work/mnt/gen" "$NATIVE"
umount "$work/mnt/gen"
(cd "$NATIVE" && find . -mindepth 1 ! -path './proj/*.o' | sed 's|^\./||') >"$work/lists/all"
(cd "$NATIVE" && find image/usr -type f) >"$work/lists/image"
chmod -R a+rX "$work/lists" "$work/home"
sync -f "$fs"
echo "    took $((SECONDS - t0)) s; $(wc -l <"$work/lists/all") entries in the merged tree" >&2

# ---------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------
cols=(native kernel)
[ "$have_fov" = 1 ] && cols+=(fov)
cols+=(uf)
# FUSE over io_uring (`--io-uring`): the kernel switch is on for the run and
# put back as it was at the end.
uring_param=/sys/module/fuse/parameters/enable_uring
if [ "$NO_URING" = 0 ] && [ -w "$uring_param" ]; then
    uring_was=$(cat "$uring_param")
    echo Y >"$uring_param"
    cols+=(ufr)
elif [ "$NO_URING" = 0 ]; then
    note "unionfuse (root, io_uring) column skipped: this kernel has no FUSE over io_uring"
fi
declare -A cname=([native]="native ext4" [kernel]="kernel overlayfs" [fov]="fuse-overlayfs"
    [uf]="unionfuse (root)" [ufr]="unionfuse (root, io_uring)" [ufu]="unionfuse (user)")

cp bench/helper.sh "$work/bin/helper.sh"
install -m 755 "$UF" "$work/bin/unionfuse"
chmod 755 "$work/bin/helper.sh"
export L1 L2 L3 BENCH_GIT_HOME=$work/home
H=$work/bin/helper.sh

# The unprivileged column: a private mount namespace, kept by a holder
# process, where a 0666 node of the FUSE device covers /dev/fuse (the
# host's stays as it is); commands enter it with nsenter as $user.
uenv=()
if [ "$NO_USER" = 1 ]; then
    note "unionfuse (user) column skipped (--no-user)"
else
    uid=$(id -u "$user") gid=$(id -g "$user")
    mkdir -m 755 "$work/nsdev"
    mkdir -m 700 "$work/uhome"
    chown "$user:" "$work/uhome"
    fusedev=$(stat -c '%Hr %Lr' /dev/fuse)
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private -- bash -c '
        mount -t tmpfs -o mode=755,size=64k tmpfs "$1" &&
        mknod -m 666 "$1/fuse" c $2 &&
        mount --bind "$1/fuse" /dev/fuse &&
        touch "$1/ready" && exec sleep infinity' holder "$work/nsdev" "$fusedev" &
    nspid=$!
    for _ in $(seq 100); do
        nsenter -t "$nspid" -m test -e "$work/nsdev/ready" 2>/dev/null && break
        sleep 0.05
    done
    uenv=(PATH="$PATH" HOME="$work/uhome" TMPDIR="$work/uhome" LANG=C.UTF-8 USER="$user"
        L1="$L1" L2="$L2" L3="$L3" UFBIN="$work/bin/unionfuse" BENCH_GIT_HOME="$work/uhome")
    if nsenter -t "$nspid" -m test -e "$work/nsdev/ready" 2>/dev/null &&
        nsenter -t "$nspid" -m -- setpriv --reuid="$uid" --regid="$gid" --clear-groups -- \
            env -i "${uenv[@]}" test -r /dev/fuse -a -w /dev/fuse; then
        cols+=(ufu)
    else
        note "unionfuse (user) column skipped: could not set up the private namespace with a 0666 /dev/fuse"
    fi
fi

# prefix COL: sets PFX to what runs a command as that column runs things.
prefix() {
    if [ "$1" = ufu ]; then
        PFX=(nsenter -t "$nspid" -m -- setpriv --reuid="$uid" --regid="$gid" --clear-groups --
            env -i "${uenv[@]}")
    else
        PFX=(env UFBIN="$UF")
    fi
}
# run_in COL CMD...: runs CMD as that column runs things.
run_in() {
    local PFX
    prefix "$1"
    shift
    "${PFX[@]}" "$@"
}

# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------
rows=(find_warm find_drop2 lstat_warm lstat_fresh lstat_drop3 lsf_warm lsf_fresh lsl_warm lsl_fresh
    tar_warm tar_cold)
[ "$have_git" = 1 ] && rows+=(git_warm git_fresh)
rows+=(untar rm_untar rm_lower dd_cold dd_warm)
[ "$have_fio" = 1 ] && rows+=(fio_read fio_write)
[ "$have_cc" = 1 ] && rows+=(build)
rows+=(meta mount_ls container cycles)
tar_dirs=(tree/t0 tree/t1 tree/t2 tree/t3 tree/t4 tree/t5 tree/t6 tree/t7 tree/t8)
tarn=$(grep -cE '^tree/t[0-8]/d[0-9]+/[fn][0-9]+$' "$work/lists/all" || true)
rmn=$(grep -cE '^tree/t49/' "$work/lists/all" || true)
alln=$(wc -l <"$work/lists/all")
declare -A label=(
    [find_warm]="find -type f, warm"
    [find_drop2]="find -type f, dentries+inodes dropped"
    [lstat_warm]="lstat $alln entries, warm"
    [lstat_fresh]="lstat $alln entries, fresh mount"
    [lstat_drop3]="lstat $alln entries, caches dropped"
    [lsf_warm]="ls -f $BIGDIR-entry dir, warm"
    [lsf_fresh]="ls -f $BIGDIR-entry dir, fresh mount"
    [lsl_warm]="ls -l $BIGDIR-entry dir, warm"
    [lsl_fresh]="ls -l $BIGDIR-entry dir, fresh mount"
    [tar_warm]="tar cf - $tarn files, warm"
    [tar_cold]="tar cf - $tarn files, caches dropped"
    [git_warm]="git status $GITN files, warm"
    [git_fresh]="git status $GITN files, fresh mount"
    [untar]="tar xf $TARN files (+ syncfs)"
    [rm_untar]="rm -rf the $TARN files (+ syncfs)"
    [rm_lower]="rm -rf lower tree, $rmn entries (+ syncfs)"
    [dd_cold]="dd $BIG_MB MiB lower file, cold"
    [dd_warm]="dd $BIG_MB MiB lower file, warm"
    [fio_read]="fio 4k randread $FIO_MB MiB of lower file, cold"
    [fio_write]="fio 4k randwrite $FIO_MB MiB + fsync, new file"
    [build]="make -j2, $CCN C files in a lower"
    [meta]="chmod + touch $LARGE_MB MiB lower file (+ syncfs)"
    [mount_ls]="mount in background, poll, first ls"
    [container]="container start: mount, read $IMAGEN files, run $BINS bins"
    [cycles]="$CYCLES x mount/run/unmount throwaway root"
)
# Rows that need a mount: nothing to measure natively.
declare -A no_native=([lstat_fresh]=1 [lsf_fresh]=1 [lsl_fresh]=1 [git_fresh]=1 [mount_ls]=1 [cycles]=1)

declare -A R ST
cur_col= cur_mnt= cur_up= cur_wk= mounted=0

drop() {
    sync -f "$fs"
    echo "$1" >/proc/sys/vm/drop_caches
}

hmount() { run_in "$cur_col" "$H" mount "$cur_col" "$cur_mnt" "$cur_up" "$cur_wk" && mounted=1; }
humount() {
    [ "$mounted" = 1 ] || return 0
    mounted=0
    run_in "$cur_col" "$H" umount "$cur_col" "$cur_mnt"
}
remount() { humount && hmount; }

# stats_sample: "op count" lines of the current unionfuse mount, or nothing.
stats_sample() {
    case $cur_col in uf | ufr | ufu) ;; *) return 0 ;; esac
    [ "$mounted" = 1 ] || return 0
    local bin=$UF
    [ "$cur_col" = ufu ] && bin=$work/bin/unionfuse
    run_in "$cur_col" "$bin" stats --json "$cur_mnt" 2>/dev/null |
        grep -o '"op":"[a-z_]*","count":[0-9]*' | sed 's/"op":"\([a-z_]*\)","count":\([0-9]*\)/\1 \2/' || true
}
# stats_delta BEFORE AFTER: "op N, op N, ..." by count, largest first.
stats_delta() {
    awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d > 0) print d, $1 }' \
        <(printf '%s\n' "$1") <(printf '%s\n' "$2") |
        sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 } END { if (NR == 0) printf "none" }'
}

# measure ROW CMD...: the timed command of ROW for the current column, run
# through the helper; keeps the seconds (or "fail") and the FUSE requests.
measure() {
    local row=$1 v before after
    shift
    before=$(stats_sample)
    local PFX
    prefix "$cur_col"
    if v=$(timeout --kill-after=10 "$TMO" "${PFX[@]}" "$@" 2>"$work/err") && [[ $v =~ ^[0-9.]+$ ]]; then
        R["$row|$cur_col|$rep"]=$v
    else
        echo >&2
        say "$row, ${cname[$cur_col]}: failed: $(head -c 300 "$work/err")"
        R["$row|$cur_col|$rep"]=fail
        v=fail
    fi
    case $cur_col in
    uf | ufr | ufu)
        case $row in
        mount_ls | container)
            # Sampled from the mount the row made, if it is there.
            before=
            if run_in "$cur_col" mountpoint -q "$cur_mnt"; then mounted=1; fi
            ;;
        esac
        if [ "$row" = cycles ]; then
            ST["$row|$cur_col"]="(a mount per cycle)"
        else
            after=$(stats_sample)
            ST["$row|$cur_col"]=$(stats_delta "$before" "$after")
        fi
        ;;
    esac
    printf ' %s' "$v" >&2
}

# t CMD...: CMD timed in the current column.
t() { measure "$row" "$H" time "$@"; }
# w CMD...: CMD untimed (warming, setup) in the current column.
w() { run_in "$cur_col" "$@" >/dev/null 2>&1 || true; }

# run_row ROW ROOT: sets up and measures one row.
run_row() {
    row=$1
    local root=$2 nat=0
    [ "$cur_col" = native ] && nat=1
    if [ "$nat" = 1 ] && [ -n "${no_native[$row]:-}" ]; then
        R["$row|native|$rep"]=n/a
        printf ' n/a' >&2
        return 0
    fi
    case $row in
    find_warm) w find "$root" -type f && t find "$root" -type f ;;
    find_drop2) drop 2 && t find "$root" -type f ;;
    lstat_warm) w "$H" lstat-all "$root" "$work/lists/all" && t "$H" lstat-all "$root" "$work/lists/all" ;;
    lstat_fresh) remount && t "$H" lstat-all "$root" "$work/lists/all" ;;
    lstat_drop3) drop 3 && t "$H" lstat-all "$root" "$work/lists/all" ;;
    lsf_warm) w ls -f "$root/big" && t ls -f "$root/big" ;;
    lsf_fresh) remount && t ls -f "$root/big" ;;
    lsl_warm) w ls -l "$root/big" && t ls -l "$root/big" ;;
    lsl_fresh) remount && t ls -l "$root/big" ;;
    tar_warm)
        w sh -c "tar -C '$root' -cf - ${tar_dirs[*]} | wc -c"
        t sh -c "tar -C '$root' -cf - ${tar_dirs[*]} | wc -c"
        ;;
    tar_cold) drop 3 && t sh -c "tar -C '$root' -cf - ${tar_dirs[*]} | wc -c" ;;
    git_warm) w "$H" git-status "$root/repo" && t "$H" git-status "$root/repo" ;;
    git_fresh) remount && t "$H" git-status "$root/repo" ;;
    untar) w mkdir -p "$root/untar" && t sh -c "tar -C '$root/untar' -xf '$fs/src.tar' && sync -f '$fs'" ;;
    rm_untar) t sh -c "rm -rf '$root/untar' && sync -f '$fs'" ;;
    rm_lower)
        if [ "$nat" = 1 ]; then cp -a "$root/tree/t49" "$root/tree/t49.keep"; fi
        w find "$root/tree/t49"
        sync -f "$fs"
        t sh -c "rm -rf '$root/tree/t49' && sync -f '$fs'"
        if [ "$nat" = 1 ]; then mv "$root/tree/t49.keep" "$root/tree/t49"; fi
        ;;
    dd_cold) drop 3 && t dd if="$root/bigfile" of=/dev/null bs=1M status=none ;;
    dd_warm) t dd if="$root/bigfile" of=/dev/null bs=1M status=none ;;
    fio_read)
        drop 3
        t fio --name=randread --filename="$root/bigfile" --readonly --rw=randread --bs=4k \
            --ioengine=psync --size="${BIG_MB}M" --io_size="${FIO_MB}M" --randseed=42 --minimal
        ;;
    fio_write)
        w fio --name=layout --filename="$root/fio.dat" --size="${FIO_MB}M" --create_only=1 --minimal
        sync -f "$fs"
        t fio --name=randwrite --filename="$root/fio.dat" --rw=randwrite --bs=4k --ioengine=psync \
            --size="${FIO_MB}M" --io_size="${FIO_MB}M" --randseed=42 --end_fsync=1 --minimal
        ;;
    build) t make -C "$root/proj" -j2 -s ;;
    meta) t sh -c "chmod 600 '$root/large.bin' && touch '$root/large.bin' && sync -f '$fs'" ;;
    mount_ls) humount && measure "$row" "$H" mount-ls "$cur_col" "$cur_mnt" "$cur_up" "$cur_wk" && mounted=1 ;;
    container)
        if [ "$nat" = 0 ]; then humount; fi
        # Hot in the host's page cache: read through the lower itself (and
        # the native copy).
        (cd "$L3" && xargs -a "$work/lists/image" cat >/dev/null && cat image/bin/* >/dev/null)
        (cd "$NATIVE" && xargs -a "$work/lists/image" cat >/dev/null && cat image/bin/* >/dev/null)
        measure "$row" "$H" container "$cur_col" "$root" "$cur_up" "$cur_wk" "$work/lists/image"
        [ "$nat" = 1 ] || mounted=1
        ;;
    cycles)
        humount
        local cdir=$fs/cycles-$cur_col
        rm -rf "$cdir" && mkdir -p "$cdir"
        [ "$cur_col" != ufu ] || chown "$user:" "$cdir"
        measure "$row" "$H" cycles "$cur_col" "$cur_mnt" "$cdir" "$CYCLES"
        rm -rf "$cdir"
        ;;
    esac
}

# One repetition of every row for one column, on a fresh copy of the upper.
run_column() {
    cur_col=$1
    cur_mnt=$work/mnt/$cur_col cur_up=$fs/up-$cur_col cur_wk=$fs/wk-$cur_col
    local root=$cur_mnt
    local col_t0=$SECONDS
    printf '    %-18s' "${cname[$cur_col]}:" >&2
    mkdir -p "$cur_mnt"
    if [ "$cur_col" = native ]; then
        root=$NATIVE
        make -C "$NATIVE/proj" -s clean >/dev/null 2>&1 || true
        chmod 644 "$NATIVE/large.bin"
        rm -rf "$NATIVE/fio.dat" "$NATIVE/untar"
    else
        rm -rf "$cur_up" "$cur_wk"
        cp -a "$U0" "$cur_up"
        mkdir "$cur_wk"
        if [ "$cur_col" = ufu ]; then chown "$user:" "$cur_mnt" "$cur_wk"; fi
        sync -f "$fs"
        if ! hmount 2>"$work/err"; then
            say "${cname[$cur_col]}: mount failed: $(head -c 300 "$work/err")"
            for row in "${rows[@]}"; do R["$row|$cur_col|$rep"]=fail; done
            return 0
        fi
    fi
    for row in "${rows[@]}"; do
        if ! run_row "$row" "$root"; then
            say "$row, ${cname[$cur_col]}: setup failed"
            [ -n "${R["$row|$cur_col|$rep"]:-}" ] || R["$row|$cur_col|$rep"]=fail
            # A mount lost on the way is brought back for the next rows.
            if [ "$cur_col" != native ] && ! run_in "$cur_col" mountpoint -q "$cur_mnt"; then
                mounted=0
                hmount || true
            fi
        fi
    done
    if [ "$cur_col" != native ]; then
        humount || { say "${cname[$cur_col]}: unmount failed" && unmount_matching "$cur_mnt"; }
        rm -rf "$cur_up" "$cur_wk"
    fi
    echo "  [$((SECONDS - col_t0)) s]" >&2
}

echo "==> columns: $(for c in "${cols[@]}"; do printf '%s; ' "${cname[$c]}"; done)" >&2
echo "==> rows, in order: ${rows[*]}" >&2
bench_start=$SECONDS
for ((rep = 1; rep <= REPS; rep++)); do
    echo "==> repetition $rep of $REPS" >&2
    for c in "${cols[@]}"; do run_column "$c"; done
done
bench_secs=$((SECONDS - bench_start))

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
# stat ROW COL: "median min max" over the reps, or the word when any failed.
summary() {
    local vals=() r v
    for ((r = 1; r <= REPS; r++)); do
        v=${R["$1|$2|$r"]:-}
        [[ $v =~ ^[0-9.]+$ ]] || { echo "${v:--}"; return; }
        vals+=("$v")
    done
    printf '%s\n' "${vals[@]}" | sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR] }'
}
fmt() { awk -v v="$1" 'BEGIN { if (v < 10) printf "%.3f", v; else if (v < 100) printf "%.2f", v; else printf "%.1f", v }'; }
declare -A MED CELL
for row in "${rows[@]}"; do
    for c in "${cols[@]}"; do
        s=$(summary "$row" "$c")
        if [[ $s == *" "* ]]; then
            read -r m lo hi <<<"$s"
            MED["$row|$c"]=$m
            CELL["$row|$c"]="$(fmt "$m") ($(fmt "$lo")-$(fmt "$hi"))"
        else
            CELL["$row|$c"]=$s
        fi
    done
done
ratio() { # NUM DEN
    local a=${MED["$1"]:-} b=${MED["$2"]:-}
    [ -n "$a" ] && [ -n "$b" ] || { echo -; return; }
    awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
}
others=()
for c in "${cols[@]}"; do [ "$c" = kernel ] || others+=("$c"); done
nonnative=()
for c in "${cols[@]}"; do [ "$c" = native ] || nonnative+=("$c"); done
short() { case $1 in native) echo native ;; kernel) echo kernel ;; fov) echo fuse-ovl ;; uf) echo uf-root ;; ufr) echo uf-uring ;; ufu) echo uf-user ;; esac; }

qtag=
[ "$QUICK" = 0 ] || qtag=" --quick"
header="unionfuse benchmark${qtag:+ (--quick)}: $FILES files in $DIRS dirs with $SYMLINKS symlinks over 2 lowers and an upper, a $BIGDIR-entry dir merged from 3 lowers"
machine="journaled ext4 on a loop device; $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%d)"
legend="seconds, median (min-max) of $REPS interleaved repetitions; ratios are of medians (above 1: slower)"
{
    echo
    echo "$header"
    echo "$machine"
    echo "$legend"
    for n in "${notes[@]}"; do echo "note: $n"; done
    echo
    printf '%-50s' workload
    for c in "${cols[@]}"; do printf ' %-24s' "${cname[$c]}"; done
    echo
    for row in "${rows[@]}"; do
        printf '%-50s' "${label[$row]}"
        for c in "${cols[@]}"; do printf ' %-24s' "${CELL["$row|$c"]}"; done
        echo
    done
    echo
    printf '%-50s' "ratios"
    for c in "${others[@]}"; do printf ' %16s' "$(short "$c")/kernel"; done
    for c in "${nonnative[@]}"; do printf ' %16s' "$(short "$c")/native"; done
    echo
    for row in "${rows[@]}"; do
        printf '%-50s' "${label[$row]}"
        for c in "${others[@]}"; do printf ' %16s' "$(ratio "$row|$c" "$row|kernel")"; done
        for c in "${nonnative[@]}"; do printf ' %16s' "$(ratio "$row|$c" "$row|native")"; done
        echo
    done
    for c in uf ufr ufu; do
        [[ " ${cols[*]} " == *" $c "* ]] || continue
        echo
        echo "FUSE requests of ${cname[$c]} by opcode (repetition $REPS; what reaches the daemon):"
        for row in "${rows[@]}"; do printf '  %-50s %s\n' "${label[$row]}" "${ST["$row|$c"]:--}"; done
    done
    echo
    echo "measured in $bench_secs s; total run $((SECONDS - run_start)) s (image generation included)"
} | tee "$work/report.txt"

# Markdown
{
    echo "# unionfuse benchmark"
    echo
    echo "$header; $machine."
    echo
    echo "Generated by \`bench/run.sh$qtag\`; $legend."
    for n in "${notes[@]}"; do echo "Note: $n."; done
    echo
    printf '| workload |'
    for c in "${cols[@]}"; do printf ' %s |' "${cname[$c]}"; done
    echo
    printf '|---|'
    for c in "${cols[@]}"; do printf -- '---:|'; done
    echo
    for row in "${rows[@]}"; do
        printf '| %s |' "${label[$row]}"
        for c in "${cols[@]}"; do printf ' %s |' "${CELL["$row|$c"]}"; done
        echo
    done
    echo
    echo "Ratios of medians (above 1: slower than the reference):"
    echo
    printf '| workload |'
    for c in "${others[@]}"; do printf ' %s / kernel |' "$(short "$c")"; done
    for c in "${nonnative[@]}"; do printf ' %s / native |' "$(short "$c")"; done
    echo
    printf '|---|'
    for c in "${others[@]}" "${nonnative[@]}"; do printf -- '---:|'; done
    echo
    for row in "${rows[@]}"; do
        printf '| %s |' "${label[$row]}"
        for c in "${others[@]}"; do printf ' %s |' "$(ratio "$row|$c" "$row|kernel")"; done
        for c in "${nonnative[@]}"; do printf ' %s |' "$(ratio "$row|$c" "$row|native")"; done
        echo
    done
    echo
    echo "![ratios to kernel overlayfs]($(basename "$SVG"))"
    for c in uf ufr ufu; do
        [[ " ${cols[*]} " == *" $c "* ]] || continue
        echo
        echo "FUSE requests of ${cname[$c]} by opcode (repetition $REPS):"
        echo
        echo "| workload | requests |"
        echo "|---|---|"
        for row in "${rows[@]}"; do echo "| ${label[$row]} | ${ST["$row|$c"]:--} |"; done
    done
    echo
    echo "Measured in $bench_secs s; total run $((SECONDS - run_start)) s."
} >"$OUT"

# SVG: ratio to kernel overlayfs of every other column, on a log scale
# centred on 1 (bars to the left: faster than kernel overlayfs).
{
    for row in "${rows[@]}"; do
        for c in "${others[@]}"; do
            printf '%s\t%s\t%s\n' "${label[$row]}" "${cname[$c]}" "$(ratio "$row|$c" "$row|kernel")"
        done
    done
} | awk -F'\t' -v title="Ratio to kernel overlayfs (log scale; left of 1: faster, right: slower)" -v sub_="$header" -v sub2="$machine" '
    function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); return s }
    function x(r) { return left + (log(r) / log(2) - lo) / (hi - lo) * width }
    BEGIN { nrows = 0; ncols = 0; mn = 0; mx = 0 }
    {
        if (!($1 in rowi)) { rowi[$1] = nrows; rowname[nrows++] = $1 }
        if (!($2 in coli)) { coli[$2] = ncols; colname[ncols++] = $2 }
        v[rowi[$1], coli[$2]] = $3
        if ($3 ~ /^[0-9.]+$/ && $3 > 0) { l = log($3) / log(2); if (l < mn) mn = l; if (l > mx) mx = l }
    }
    END {
        lo = int(mn) - 1; hi = int(mx) + 1
        if (lo < -6) lo = -6; if (hi > 8) hi = 8; if (lo > -1) lo = -1; if (hi < 1) hi = 1
        left = 330; width = 560; bar = 8; gap = 10
        group = ncols * bar + gap; top = 76
        H = top + nrows * group + 40
        split("#7f7f7f #1f77b4 #d62728 #2ca02c #9467bd", color, " ")
        printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", left + width + 30, H
        printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
        printf "<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", esc(title)
        printf "<text x=\"10\" y=\"32\" font-size=\"9\">%s</text>\n", esc(sub_)
        printf "<text x=\"10\" y=\"43\" font-size=\"9\">%s</text>\n", esc(sub2)
        lx = 10
        for (c = 0; c < ncols; c++) {
            printf "<rect x=\"%d\" y=\"50\" width=\"10\" height=\"10\" fill=\"%s\"/>", lx, color[c + 1]
            printf "<text x=\"%d\" y=\"59\">%s</text>\n", lx + 14, esc(colname[c])
            lx += 30 + 7 * length(colname[c])
        }
        for (e = lo; e <= hi; e++) {
            xx = x(2 ^ e)
            printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-width=\"%s\"/>\n", xx, top - 6, xx, H - 30, (e == 0 ? "black" : "#dddddd"), (e == 0 ? 1.5 : 1)
            printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", xx, H - 16, (e < 0 ? "1/" 2 ^ -e : 2 ^ e)
        }
        for (r = 0; r < nrows; r++) {
            y0 = top + r * group
            printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", left - 6, y0 + ncols * bar / 2 + 4, esc(rowname[r])
            for (c = 0; c < ncols; c++) {
                val = v[r, c]
                if (val !~ /^[0-9.]+$/ || val <= 0) continue
                rv = val; if (log(rv) / log(2) < lo) rv = 2 ^ lo; if (log(rv) / log(2) > hi) rv = 2 ^ hi
                x1 = x(1); x2 = x(rv)
                printf "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"><title>%s, %s: %s</title></rect>\n", (x1 < x2 ? x1 : x2), y0 + c * bar, (x1 < x2 ? x2 - x1 : x1 - x2) + 0.5, bar - 1, color[c + 1], esc(rowname[r]), esc(colname[c]), val
            }
        }
        print "</svg>"
    }' >"$SVG"
echo >&2
echo "==> wrote $OUT and $SVG" >&2
