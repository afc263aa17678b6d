#!/usr/bin/env bash
# Sets up faize on a Debian/Ubuntu host, then starts a session or runs the tests.
#
#   ./setup.sh start [FAIZE START FLAGS] [-- CMD]   set up, then `faize start` in the current folder
#   ./setup.sh test                                  set up, then run the whole test suite
#   ./setup.sh                                       set up only
#
# Idempotent: each step checks what is there and does nothing when it is already done.
set -euo pipefail
cd "$(dirname "$0")"
repo=$(pwd)

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
say() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
packages=(
  qemu-system-x86 mmdebstrap erofs-utils e2fsprogs ca-certificates
  # kernel build
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils
  # building virtiofsd
  libcap-ng-dev libseccomp-dev pkg-config
  # the clipboard tests: a virtual X display and the host's clipboard tool
  xvfb xclip
)
missing=()
for p in "${packages[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- Rust toolchain and the vhost-user sidecars ----------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { say "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again"; exit 1; }
have_version() { command -v "$1" >/dev/null && "$1" --version 2>/dev/null | grep -q " $2"; }
have_version virtiofsd 1.14 || { say "installing virtiofsd 1.14"; cargo install --locked --quiet virtiofsd --version '~1.14'; }
have_version vhost-device-vsock 0.3 || { say "installing vhost-device-vsock 0.3"; cargo install --locked --quiet vhost-device-vsock --version '~0.3'; }

# --- faize and its guest agent ---------------------------------------------------------------
say "building faize"
cargo build --release --quiet -p faize
# The agent is PID 1 in the VM: a static glibc binary (crt-static only for this target build).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet -p faize-agent --target x86_64-unknown-linux-gnu
faize="$repo/target/release/faize"

# --- images ----------------------------------------------------------------------------------
"$faize" artifacts build all

case "${1:-}" in
  start)
    shift
    exec "$faize" start "$@"
    ;;
  test)
    say "running the test suite"
    # VM tests use their own FAIZE_HOME but share the images built above.
    export FAIZE_ARTIFACTS_DIR="${FAIZE_ARTIFACTS_DIR:-${FAIZE_HOME:-$HOME/.faize}/artifacts}"
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    set +e
    cargo test --workspace --release 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    # One closing line for the whole suite (cargo prints one per test binary).
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { printf "\n%d passed, %d failed\n", p, f }' "$log"
    exit "$status"
    ;;
  "") say "done: $faize start" ;;
  *) say "unknown action $1: use start or test"; exit 2 ;;
esac
