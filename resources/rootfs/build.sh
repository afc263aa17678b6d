#!/usr/bin/env bash
# Builds a Faize root image: Debian bookworm from mmdebstrap, packed as a read-only EROFS image.
# Usage: build.sh OUTPUT_IMAGE WORK_DIR [CLAUDE_CODE_VERSION [EXTRA_PACKAGE...]]
# With a Claude Code version, the image also holds `claude` (the agent image), and the extra
# Debian packages (claude.extra_deps, names checked by faize; each passed as its own argument).
# Progress lines start with "step:" so faize can show them.
set -euo pipefail
out=$1 work=$2 claude_version=${3:-}
extra_includes=()
for pkg in "${@:4}"; do extra_includes+=("--include=$pkg"); done
here=$(cd "$(dirname "$0")" && pwd)
mirror=${FAIZE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

packages=$(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$' | paste -sd, -)
tree="$work/tree"
rm -rf "$tree"; mkdir -p "$work"

hooks=()
if [ -n "$claude_version" ]; then
  # npm inside the chroot trusts the host's CA bundle (hosts behind a TLS-inspecting proxy need
  # it); the copy is removed with /tmp below and is not part of the image.
  hooks+=(--customize-hook='cp -L /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt"')
  hooks+=(--customize-hook="chroot \"\$1\" env NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt npm install --global --cafile=/tmp/host-ca.crt --no-fund --no-audit --loglevel=error @anthropic-ai/claude-code@$claude_version")
  hooks+=(--customize-hook='chroot "$1" claude --version')
fi
# Mount points the guest agent uses; the image itself is never written to.
hooks+=(--customize-hook='mkdir -p "$1/opt/toolchain"')
# The unprivileged user the agent runs programs as (uid 1000, passwordless sudo inside the VM),
# made here so the agent does not write these files at every boot.
hooks+=(--customize-hook='chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash --comment "faize agent" faize')
hooks+=(--customize-hook='printf "faize ALL=(ALL:ALL) NOPASSWD: ALL\n" > "$1/etc/sudoers.d/faize"; chmod 0440 "$1/etc/sudoers.d/faize"')
hooks+=(--customize-hook='printf "[safe]\n\tdirectory = *\n" > "$1/etc/gitconfig"')
# The VM has no network device; DNS is answered by the agent on loopback (network issue).
hooks+=(--customize-hook='printf "nameserver 127.0.0.1\n" > "$1/etc/resolv.conf"')
hooks+=(--customize-hook='printf "faize\n" > "$1/etc/hostname"; printf "127.0.0.1 localhost faize\n::1 localhost\n" > "$1/etc/hosts"')
hooks+=(--customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/root/.npm "$1"/tmp/*')

echo "step: bootstrapping Debian bookworm ($(echo "$packages" | tr ',' ' ' | wc -w) packages${4:+, extra: ${*:4}})"
mmdebstrap --variant=minbase --mode=root --include="$packages" "${extra_includes[@]}" "${hooks[@]}" bookworm "$tree" "$mirror"

echo "step: packing EROFS image"
tmp="$out.tmp.$$"
mkfs.erofs --quiet "$tmp" "$tree"
mv "$tmp" "$out"
rm -rf "$tree"
echo "step: done ($(du -h "$out" | cut -f1))"
