#!/usr/bin/env bash
# Builds the Tessera OCI image with buildah from already built binaries.
#
#   deploy/image/build.sh BIN_DIR IMAGE [BUILDAH_GLOBAL_OPTION...]
#
# BIN_DIR holds tesserad and tessera (make image: the release build; the
# image test: the debug build make test already made). IMAGE is the name and
# tag to give it, e.g. localhost/tessera:0.1.0. Options after IMAGE go
# before buildah's subcommand (the test passes --root/--runroot so its
# images live in a directory of its own). The storage driver is
# $STORAGE_DRIVER, default vfs, which works without overlay support in the
# kernel or fuse; use the driver your podman/buildah storage already uses.
# Then e.g. `buildah push IMAGE docker://registry.example.org/tessera:VERSION`
# or `buildah push IMAGE oci-archive:tessera.tar`.
#
# The version and source come from Cargo.toml, the revision from git (when
# this is a git checkout). They become OCI labels and annotations.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ $# -lt 2 ]; then
  echo "usage: $0 BIN_DIR IMAGE [BUILDAH_GLOBAL_OPTION...]" >&2
  exit 2
fi
bin_dir=$1
image=$2
shift 2

command -v buildah >/dev/null || { echo "buildah not found: apt-get install buildah" >&2; exit 1; }
for b in tesserad tessera; do
  [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b missing: build it first" >&2; exit 1; }
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || { echo "$ca_bundle missing: apt-get install ca-certificates" >&2; exit 1; }

# [workspace.package] version and repository.
workspace_value() {
  sed -n '/^\[workspace.package\]/,/^\[/ s/^'"$1"' *= *"\(.*\)"/\1/p' "$repo/Cargo.toml"
}
version=$(workspace_value version)
source_url=$(workspace_value repository)
[ -n "$version" ] && [ -n "$source_url" ] || { echo "no version or repository in $repo/Cargo.toml" >&2; exit 1; }
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's time, not now: the same commit gives the same label.
created=$(git -C "$repo" show -s --format=%cI HEAD 2>/dev/null || echo 1970-01-01T00:00:00Z)

ctx=$(mktemp -d "${TMPDIR:-/tmp}/tessera-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
rootfs=$ctx/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/etc/tessera" "$rootfs/var/lib" \
  "$rootfs/usr/share/doc/tessera" "$ctx/state"

# The binaries, without debug info (a tenth of the size; symbols stay for backtraces).
for b in tesserad tessera; do
  strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$bin_dir/$b"
  chmod 0755 "$rootfs/usr/local/bin/$b"
done

# Every shared library they link, at the path the dynamic linker looks for it.
libs=$(for b in tesserad tessera; do ldd "$bin_dir/$b"; done | awk '
  /not found/ { print "MISSING " $1; next }
  $2 == "=>" && $3 ~ /^\// { print $3; next }
  $1 ~ /^\// { print $1 }' | sort -u)
if grep -q '^MISSING' <<<"$libs"; then
  echo "unresolved libraries: $(grep '^MISSING' <<<"$libs" | tr '\n' ' ')" >&2
  exit 1
fi
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

# Users by number (65532, like distroless "nonroot"), so logs and ps show names.
printf '%s\n' 'root:x:0:0:root:/root:/nonexistent' \
  'tessera:x:65532:65532:tessera:/var/lib/tessera:/nonexistent' >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'tessera:x:65532:' >"$rootfs/etc/group"
# glibc resolves hosts from /etc/hosts, then DNS (both built into libc 2.34+).
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
cp -L "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cp "$repo/LICENSE" "$rootfs/usr/share/doc/tessera/LICENSE"

buildah --storage-driver "${STORAGE_DRIVER:-vfs}" "$@" build --quiet --layers=false --pull=never \
  -f "$here/Containerfile" \
  --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" \
  --build-arg "SOURCE=$source_url" \
  --build-arg "CREATED=$created" \
  --annotation "org.opencontainers.image.version=$version" \
  --annotation "org.opencontainers.image.revision=$revision" \
  --annotation "org.opencontainers.image.source=$source_url" \
  -t "$image" "$ctx" >/dev/null
echo "built $image (tessera $version, $revision)"
