#!/usr/bin/env bash
# The per-column actions of bench/run.sh: mounting, unmounting and timing,
# run either as root or (for the unprivileged column) as the unprivileged
# user inside the private mount namespace that run.sh keeps. Timing happens
# here, around the command itself, so that entering the namespace and
# changing user costs no column anything.
#
#   helper.sh COMMAND COLUMN ARGS...
#
# Columns: native, kernel, fov (fuse-overlayfs), uf (unionfuse as root),
# ufu (unionfuse as an ordinary user through fusermount3).
# Environment (set by run.sh): L1 L2 L3 (lowers, top-most first), UFBIN
# (the unionfuse binary), BENCH_GIT_HOME (HOME for git).
set -euo pipefail

now_us() { echo "${EPOCHREALTIME/./}"; }
# secs T0 T1 (microseconds): prints the seconds between them.
secs() { printf '%d.%06d\n' $((($2 - $1) / 1000000)) $((($2 - $1) % 1000000)); }

# wait_until SECS CMD...: polls CMD every 5 ms until it succeeds.
wait_until() {
    local deadline=$(($(now_us) + $1 * 1000000))
    shift
    until "$@"; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.005
    done
}

do_mount() { # COL MNT UPPER WORK
    case $1 in
    kernel) mount -t overlay overlay -o "lowerdir=$L1:$L2:$L3,upperdir=$3,workdir=$4" "$2" ;;
    fov)
        # (It says it ignores the lazytime option of the filesystem below.)
        fuse-overlayfs -o "lowerdir=$L1:$L2:$L3,upperdir=$3,workdir=$4" "$2" 2>&1 |
            { grep -v 'unknown argument ignored' >&2 || true; }
        [ "${PIPESTATUS[0]}" = 0 ]
        wait_until 10 mountpoint -q "$2"
        ;;
    uf | ufu) "$UFBIN" mount --lower "$L1" --lower "$L2" --lower "$L3" --upper "$3" --work "$4" "$2" ;;
    ufr) "$UFBIN" mount --io-uring --lower "$L1" --lower "$L2" --lower "$L3" --upper "$3" --work "$4" "$2" ;;
    *) echo "helper.sh: cannot mount column $1" >&2 && return 1 ;;
    esac
}

do_umount() { # COL MNT
    case $1 in
    kernel) umount "$2" ;;
    fov) fusermount3 -u "$2" ;;
    # Its daemon writes the upper back (syncfs) before it exits, which can
    # take long on a loaded disk.
    uf | ufr | ufu) "$UFBIN" umount --timeout "${BENCH_UMOUNT_TIMEOUT:-300}" "$2" ;;
    esac
}

git_status() {
    HOME=$BENCH_GIT_HOME GIT_CONFIG_NOSYSTEM=1 git -c safe.directory='*' -C "$1" status
}

# lstat_all ROOT LIST: lstat of every path (relative to ROOT) in LIST.
lstat_all() {
    perl -e 'chdir $ARGV[0] or die "$ARGV[0]: $!"; open(my $l, "<", $ARGV[1]) or die;
        while (<$l>) { chomp; lstat($_) or die "$_: $!" }' "$1" "$2"
}

# container ROOT FILELIST: reads every file of FILELIST (relative to ROOT)
# and executes every binary of ROOT/image/bin once.
container() {
    (cd "$1" && xargs -a "$2" cat) >/dev/null
    local b
    for b in "$1"/image/bin/*; do
        "$b" --version >/dev/null
    done
}

cmd=$1
shift
case $cmd in
mount) do_mount "$@" ;;
umount) do_umount "$@" ;;
stats) "$UFBIN" stats --json "$1" ;;
# time CMD...: runs CMD (output discarded) and prints its seconds.
time)
    t0=$(now_us)
    "$@" >/dev/null
    secs "$t0" "$(now_us)"
    ;;
git-status) git_status "$@" ;;
lstat-all) lstat_all "$@" ;;
# mount-ls COL MNT UPPER WORK: starts the mount in the background, polls for
# the tree to appear (every 5 ms, as test harnesses do) and lists it.
mount-ls)
    t0=$(now_us)
    do_mount "$@" &
    bg=$!
    wait_until 30 test -e "$2/image"
    ls "$2" >/dev/null
    t1=$(now_us)
    wait "$bg"
    secs "$t0" "$t1"
    ;;
# container COL ROOT UPPER WORK FILELIST: mounts (unless native), then reads
# the files and runs the binaries of a container image.
container)
    t0=$(now_us)
    [ "$1" = native ] || do_mount "$1" "$2" "$3" "$4"
    container "$2" "$5"
    secs "$t0" "$(now_us)"
    ;;
# cycles COL MNT DIR N: N times mount over an empty upper in DIR, run a
# binary and write a file in it, unmount and remove the upper.
cycles)
    col=$1 mnt=$2 dir=$3 n=$4
    t0=$(now_us)
    for ((i = 0; i < n; i++)); do
        mkdir "$dir/u" "$dir/w"
        do_mount "$col" "$mnt" "$dir/u" "$dir/w"
        "$mnt/image/bin/true"
        echo x >"$mnt/scratch"
        do_umount "$col" "$mnt"
        rm -rf "$dir/u" "$dir/w"
    done
    secs "$t0" "$(now_us)"
    ;;
*)
    echo "helper.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
