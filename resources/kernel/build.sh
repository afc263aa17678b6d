#!/usr/bin/env bash
# Builds the Faize guest kernel from Debian's linux-source-6.1.
# Usage: build.sh OUTPUT_VMLINUX WORK_DIR
# The work dir keeps the unpacked tree so a rebuild after a config change is incremental.
# Progress lines start with "step:" so faize can show them.
set -euo pipefail
out=$1 work=$2
here=$(cd "$(dirname "$0")" && pwd)
tarball=${FAIZE_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
echo "step: checking the kernel source"
[ -f "$tarball" ] || { echo "kernel source $tarball not found: install the linux-source-6.1 package" >&2; exit 1; }

mkdir -p "$work"
src="$work/linux-source-6.1"
stamp="$work/.unpacked-$(stat -c %s-%Y "$tarball")"
if [ ! -f "$stamp" ]; then
  echo "step: unpacking $(basename "$tarball")"
  rm -rf "$src" "$work"/.unpacked-*
  tar -C "$work" -xf "$tarball"
  touch "$stamp"
fi

cd "$src"
echo "step: configuring (allnoconfig + resources/kernel/microvm.config)"
make -s allnoconfig
scripts/kconfig/merge_config.sh -m -O . .config "$here/microvm.config" >/dev/null
make -s olddefconfig

# Every requested option must have survived olddefconfig; a silently dropped option is a bug.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) want=$line ;;
    "# CONFIG_"*" is not set") want=$line ;;
    *) continue ;;
  esac
  if ! grep -qxF "$want" .config; then
    sym=${want#\# }; sym=${sym%%[= ]*}
    if [[ "$want" == "# "* ]] && ! grep -q "^$sym=" .config; then continue; fi
    echo "option not applied: $want (got: $(grep -E "^(# )?$sym[= ]" .config || echo absent))" >&2
    missing=1
  fi
done < "$here/microvm.config"
[ "$missing" = 0 ] || { echo "the kernel config fragment has options that do not apply; fix resources/kernel/microvm.config" >&2; exit 1; }

echo "step: compiling vmlinux with $(nproc) jobs (about 15 minutes the first time)"
make -j"$(nproc)" vmlinux 2>&1 | while IFS= read -r l; do
  case "$l" in *" LD "*|*" CC "*init/*) echo "progress: $l";; *warning*|*error*|*Error*) echo "$l";; esac
done
[ "${PIPESTATUS[0]}" = 0 ] || { echo "make vmlinux failed" >&2; exit 1; }

echo "step: installing"
cp vmlinux "$out"
