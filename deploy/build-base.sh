#!/usr/bin/env bash
# Build a minimal Debian bookworm base image with Python 3.11 where no image registry is
# reachable: debootstrap from the Debian mirror this host's apt already uses, then
# `docker import`. Cached by tag: does nothing when the image already exists.
#
#   deploy/build-base.sh [TAG] [EXTRA_PACKAGES]
#     TAG             default local/debian-py:bookworm
#     EXTRA_PACKAGES  comma-separated extra Debian packages (e.g. nginx-light for the LB image)
#
# Where Docker Hub is reachable, none of this is needed: BASE_IMAGE defaults to python:3.11-slim.
set -euo pipefail

TAG="${1:-local/debian-py:bookworm}"
EXTRA="${2:-}"
SUITE=bookworm

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "[base] $TAG already built (cached)"
  exit 0
fi

# The mirror comes from this host's apt configuration, never from this file.
mirror_from_apt() {
  local sources=/etc/apt/sources.list.d/debian.sources
  if [[ -f $sources ]]; then
    awk '/^URIs:/ {print $2; exit}' "$sources"
  elif [[ -f /etc/apt/sources.list ]]; then
    awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list
  fi
}
MIRROR="$(mirror_from_apt)"
if [[ -z $MIRROR ]]; then
  echo "[base] cannot find a Debian mirror in /etc/apt; set up apt first" >&2
  exit 1
fi

INCLUDE="python3,python3-venv,python3-pip,ca-certificates"
[[ -n $EXTRA ]] && INCLUDE="$INCLUDE,$EXTRA"

ROOTFS="$(mktemp -d /tmp/polynl-rootfs.XXXXXX)"
chmod 0755 "$ROOTFS"  # becomes the image's /: mktemp's 0700 would lock out non-root users
trap 'rm -rf "$ROOTFS"' EXIT
echo "[base] debootstrap $SUITE ($INCLUDE) into $ROOTFS"
start=$SECONDS
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  tail -20 "$ROOTFS.log" >&2
  exit 1
}
rm -f "$ROOTFS.log"
# Keep the image lean: apt lists and caches, docs and man pages are not needed at run time.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$TAG" >/dev/null
echo "[base] built $TAG in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
