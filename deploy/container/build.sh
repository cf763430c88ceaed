#!/usr/bin/env bash
# Builds the pgw container image (deploy/container/Containerfile, FROM scratch) from binaries
# built on this machine: no registry is needed.
#
#   deploy/container/build.sh [--bin-dir DIR] [--tag TAG] [--engine podman|docker]
#
# --bin-dir: where pgw and pgwctl are (default target/release; a static musl build such as
# target/x86_64-unknown-linux-musl/release works too). The shared libraries the binaries load
# (ldd) are copied into the image with the dynamic loader, so a glibc build runs from scratch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin_dir="$root/target/release"
tag="pgw:latest"
engine="${CONTAINER_ENGINE:-podman}"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for b in pgw pgwctl; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "build.sh: $bin_dir/$b is missing: cargo build --release --bin pgw --bin pgwctl (or pass --bin-dir)" >&2
    exit 1
  fi
done
command -v "$engine" >/dev/null || { echo "build.sh: $engine is not installed (apt-get install podman)" >&2; exit 1; }

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib" "$ctx/data"
chmod 1777 "$ctx/rootfs/tmp"
cp "$bin_dir/pgw" "$bin_dir/pgwctl" "$ctx/"
printf 'root:x:0:0:root:/root:/sbin/nologin\npgw:x:65532:65532:pgw:/var/lib/pgw:/sbin/nologin\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\npgw:x:65532:\n' > "$ctx/rootfs/etc/group"
# The libraries (and the loader) at the paths the binaries look for them.
for b in pgw pgwctl; do
  if ldd "$bin_dir/$b" >/dev/null 2>&1; then
    ldd "$bin_dir/$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
      mkdir -p "$ctx/rootfs$(dirname "$lib")"
      cp -L "$lib" "$ctx/rootfs$lib"
    done
  fi
done
"$engine" build --quiet -f "$here/Containerfile" -t "$tag" "$ctx"
echo "built $tag"
