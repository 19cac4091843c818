#!/usr/bin/env bash
# Mounts the bundled two-layer image (examples/image) with unionfuse and
# shows the merged view, then changes it the way a container would:
#   - lower2 (bottom) has etc/os-release, etc/hostname, bin/hello.sh,
#     the symlink bin/hi -> hello.sh, usr/share/doc/{README,NOTES} and
#     var/cache/old.txt;
#   - lower1 (top) overrides etc/hostname, adds etc/motd and
#     var/cache/new.txt, deletes usr/share/doc/README with the OCI whiteout
#     `.wh.README`, and makes var/cache opaque with `.wh..wh..opq`, hiding
#     old.txt.
# Then it edits a lower file, deletes one, renames a lower directory and
# creates new files, and shows what landed in the upper: copies, whiteouts
# (character devices 0:0) and nothing else; the lowers stay unchanged.
# Then the container story: `unionfuse diff` lists the changes as `docker
# diff` does; a second container from the same image sees none of them and
# is removed by removing its upper; `unionfuse commit` turns the first
# container's layer into an image layer, and a third container starts from
# it. Last, `unionfuse run` with a volume: a fourth container writes to its
# volume and to its own layer, and is removed; the volume's content
# outlives it and a fifth container reads it. (The image has no shell of
# its own: the run step adds a layer holding the host's static busybox,
# from busybox-static, installed via apt-get as root when busybox is
# missing, and is skipped without one.)
# Run from anywhere: examples/demo.sh. Needs fuse3 (installed via apt-get
# when run as root). Set UNIONFUSE=/path/to/binary to skip the build.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ensure_fuse

bin=${UNIONFUSE:-}
if [ -z "$bin" ]; then
    ensure_cargo
    echo "==> cargo build --release"
    cargo build --release --quiet
    bin=target/release/unionfuse
fi
[ -x "$bin" ] || die "no unionfuse binary at $bin"

image=$PWD/examples/image
# One temp dir holds the upper, the mountpoint and the default work dir
# (created beside the upper), so cleanup removes them all.
base=$(mktemp -d /tmp/unionfuse-demo.XXXXXX)
up=$base/upper
mnt=$base/mnt
mkdir -m 755 "$up" "$mnt"

cleanup() {
    local rc=$?
    # Every container of the demo is mounted below $base.
    "$bin" umount --all --under "$base" 2>/dev/null || true
    for m in "$mnt" "$base/mnt2"; do
        if grep -qs " $m " /proc/mounts; then
            umount -l "$m" 2>/dev/null || true
        fi
    done
    rm -rf --one-file-system "$base"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show() {
    echo
    echo "\$ $*"
    "$@"
}

echo "==> $bin mount --lower $image/lower1 --lower $image/lower2 --upper $up $mnt"
"$bin" mount --lower "$image/lower1" --lower "$image/lower2" --upper "$up" "$mnt"

cd "$mnt"
show ls -la
show find . -printf '%M %p\n'
show ls -l bin
show cat etc/hostname
show cat etc/motd
show head -n1 etc/os-release
show sh bin/hi
show ls usr/share/doc
show ls var/cache
cd - >/dev/null

echo
echo "etc/hostname comes from lower1, etc/os-release from lower2;"
echo "usr/share/doc/README is whited out and var/cache shows only new.txt."
echo "No .wh.* names are visible. Nothing was written to the upper:"
show find "$up" -mindepth 1

echo
echo "==> changes, as a container would make them"
cd "$mnt"
show sh -c 'echo demo-container > etc/hostname'
show rm usr/share/doc/NOTES
show mv var/cache var/cache.old
show mkdir -p tmp
show sh -c 'echo hello > tmp/new-file.txt'
show ls -la etc var tmp
cd - >/dev/null

echo
echo "The upper holds only the changes: copied-up files, new files, and a"
echo "whiteout (c 0,0) for each deleted or renamed-away lower name:"
show find "$up" -mindepth 1 -printf '%y %M %p\n'
echo
echo "The image layers are unchanged:"
show cat "$image/lower1/etc/hostname"

echo
echo "==> what container 1 changed, as docker diff shows it"
show "$bin" diff "$mnt"

echo
echo "==> container 2, from the same image, with a writable layer of its own"
up2=$base/upper2
mnt2=$base/mnt2
mkdir -m 755 "$up2" "$mnt2"
"$bin" mount --lower "$image/lower1" --lower "$image/lower2" --upper "$up2" "$mnt2"
show cat "$mnt2/etc/hostname"
show ls "$mnt2/usr/share/doc"
show ls "$mnt2"
echo "Container 2 sees the image, none of container 1's changes (no tmp/)."
show "$bin" list
echo
echo "==> removing container 2 is unmounting it and removing its upper"
"$bin" umount "$mnt2"
rm -rf --one-file-system "$up2" "$base/.upper2.unionfuse-work"
show ls -A "$base"

echo
echo "==> $bin umount $mnt"
"$bin" umount "$mnt"

echo
echo "==> commit: container 1's writable layer becomes an image layer"
show "$bin" commit --upper "$up" --lower "$image/lower1" --lower "$image/lower2" "$base/layer3"
echo
echo "==> container 3 starts from the image plus that layer"
up3=$base/upper3
mkdir -m 755 "$up3"
"$bin" mount --lower "$base/layer3" --lower "$image/lower1" --lower "$image/lower2" \
    --upper "$up3" "$mnt"
show cat "$mnt/etc/hostname"
show cat "$mnt/tmp/new-file.txt"
show ls "$mnt/var"
show "$bin" diff "$mnt"
echo "Nothing is changed yet in container 3: its upper is empty."
echo
echo "==> $bin umount $mnt"
"$bin" umount "$mnt"

echo
echo "==> volumes: data that outlives its container"
busybox=
for b in /bin/busybox /usr/bin/busybox; do
    # Only a static one runs inside a root without the host's libraries.
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then
        busybox=$b
        break
    fi
done
if [ -z "$busybox" ] && [ "$(id -u)" -eq 0 ] && ! command -v busybox >/dev/null 2>&1; then
    ensure_commands busybox:busybox-static
    busybox=$(command -v busybox)
fi
if [ -z "$busybox" ]; then
    echo "skipped: it needs a statically linked busybox in the image (apt-get install busybox-static)"
    exit 0
fi
# A layer that gives the image a shell and a few tools, below the image.
tools=$base/tools
mkdir -p "$tools/bin"
cp "$busybox" "$tools/bin/busybox"
for applet in sh cat ls echo find; do
    ln -s busybox "$tools/bin/$applet"
done
vol=$base/volume
up4=$base/upper4
mkdir -m 755 "$vol" "$up4"
layers=(--lower "$image/lower1" --lower "$image/lower2" --lower "$tools")
# show_run SCRIPT RUN-OPTIONS...: `unionfuse run ... -- sh -c SCRIPT`, shown
# with the script quoted.
show_run() {
    local script=$1
    shift
    echo
    echo "\$ $bin run $* -- sh -c '$script'"
    "$bin" run "$@" -- sh -c "$script"
}
show_run 'echo container-4 > /etc/hostname; echo "written by container 4" > /data/log.txt; ls /data' \
    "${layers[@]}" --upper "$up4" --volume "$vol:/data"
echo
echo "Container 4's own layer holds its change to /etc/hostname; what it"
echo "wrote to the volume is not in it:"
show find "$up4" -mindepth 1
echo
echo "==> removing container 4 (its upper); the volume stays"
rm -rf --one-file-system "$up4" "$base/.upper4.unionfuse-work"
show cat "$vol/log.txt"
echo
echo "==> container 5 (a throwaway layer) with the same volume"
show_run 'cat /data/log.txt /etc/hostname' "${layers[@]}" --volume "$vol:/data"
echo "It reads what container 4 left in the volume, and the image's"
echo "/etc/hostname: container 4's layer went with it."
