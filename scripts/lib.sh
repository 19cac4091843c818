# shellcheck shell=bash
# Shared helpers for scripts/test, examples/demo.sh and bench/run.sh: finding
# cargo, installing missing system packages, and cleaning up FUSE mounts.
# Source it; it defines functions only.

# Prints a message on stderr, prefixed with the calling script's name.
say() {
    printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

die() {
    say "$*"
    exit 1
}

# Makes sure cargo is on PATH (rustup installs it in ~/.cargo/bin, which a
# non-login shell may not have).
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "${CARGO_HOME:-$HOME/.cargo}/env" ]; then
        # shellcheck disable=SC1091
        . "${CARGO_HOME:-$HOME/.cargo}/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (https://rustup.rs)"
}

_apt_updated=0

# ensure_commands CMD:PACKAGE ...
# Installs, with apt-get, the Debian package of every CMD that is not on
# PATH. As root it runs `apt-get update` once, then one install; otherwise
# it says what to install and exits 1.
ensure_commands() {
    local pair cmd pkg missing=()
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing: ${missing[*]}; install with: sudo apt-get install ${missing[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing: ${missing[*]}, and apt-get is not available to install it"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$_apt_updated" -eq 0 ]; then
        apt-get update -qq >/dev/null || die "apt-get update failed"
        _apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# Makes sure /dev/fuse exists (loading the module if needed) and that the
# FUSE mount helper is installed.
ensure_fuse() {
    ensure_commands fusermount3:fuse3
    if [ ! -e /dev/fuse ]; then
        if [ "$(id -u)" -eq 0 ]; then
            modprobe fuse 2>/dev/null || true
        fi
        [ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    fi
}

# Decodes the octal escapes (\040 etc.) that /proc/self/mountinfo uses.
_unescape_mount() {
    printf '%b' "$1"
}

# unmount_matching PATTERN
# Lazily unmounts every FUSE or overlay mount whose mount point contains
# PATTERN (a fixed string), deepest first. For FUSE mounts it first aborts
# the connection so that a process stuck on a hung daemon is released.
unmount_matching() {
    local pattern=$1 line mnt dev fstype minor
    local -a found=()
    while IFS= read -r line; do
        # mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SRC SUPER
        dev=$(printf '%s' "$line" | cut -d' ' -f3)
        mnt=$(_unescape_mount "$(printf '%s' "$line" | cut -d' ' -f5)")
        fstype=$(printf '%s' "$line" | sed 's/.* - \([^ ]*\) .*/\1/')
        case "$mnt" in *"$pattern"*) ;; *) continue ;; esac
        case "$fstype" in fuse | fuse.* | fuseblk | overlay) ;; *) continue ;; esac
        found+=("$fstype|$dev|$mnt")
    done </proc/self/mountinfo
    [ ${#found[@]} -eq 0 ] && return 0
    # Deepest (longest path) first.
    local entry
    while IFS= read -r entry; do
        fstype=${entry%%|*}
        entry=${entry#*|}
        dev=${entry%%|*}
        mnt=${entry#*|}
        say "cleaning up leftover $fstype mount $mnt"
        case "$fstype" in
        fuse*)
            minor=${dev#*:}
            if [ -w "/sys/fs/fuse/connections/$minor/abort" ]; then
                echo 1 >"/sys/fs/fuse/connections/$minor/abort" 2>/dev/null || true
            fi
            ;;
        esac
        umount -l "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || say "could not unmount $mnt"
    done < <(printf '%s\n' "${found[@]}" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
}

# ensure_system_user NAME
# Creates NAME, with a group of its own and no home directory, unless it
# exists. Root only.
ensure_system_user() {
    local name=$1
    id -u "$name" >/dev/null 2>&1 && return 0
    command -v useradd >/dev/null 2>&1 || die "useradd not found: cannot create user $name"
    say "creating system user $name"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$name" || die "useradd $name failed"
}

# as_user NAME CMD...
# Runs CMD as NAME (its own group, no supplementary groups), keeping the
# environment, from root.
as_user() {
    local name=$1
    shift
    setpriv --reuid="$(id -u "$name")" --regid="$(id -g "$name")" --clear-groups -- "$@"
}

# test_artifacts [CARGO TEST ARGS...]
# Builds the integration tests and prints what they run: `test PATH` for
# each test executable, `bin PATH` for each binary of the package.
test_artifacts() {
    cargo test --tests --no-run --message-format=json "$@" \
        | grep '"reason":"compiler-artifact"' \
        | sed -n -e 's/.*"kind":\["test"\].*"executable":"\([^"]*\)".*/test \1/p' \
            -e 's/.*"kind":\["bin"\].*"test":false.*"executable":"\([^"]*\)".*/bin \1/p'
}

# Sets UF to the unionfuse binary to measure: $UNIONFUSE when given, else a
# release build of this checkout.
release_binary() {
    if [ -n "${UNIONFUSE:-}" ]; then
        UF=$UNIONFUSE
    else
        cargo build --release --quiet
        UF=$PWD/target/release/unionfuse
    fi
    [ -x "$UF" ] || die "no binary at $UF"
}

# Makes sure `cargo deb` works, installing cargo-deb with cargo when it is
# missing (a build of a few minutes).
ensure_cargo_deb() {
    cargo deb --version >/dev/null 2>&1 && return 0
    say "installing cargo-deb with cargo install --locked cargo-deb"
    cargo install --locked --quiet cargo-deb || die "cargo install cargo-deb failed"
    cargo deb --version >/dev/null 2>&1 || die "cargo-deb was installed but \`cargo deb\` does not run (is ~/.cargo/bin on PATH?)"
}
