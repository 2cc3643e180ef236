#!/usr/bin/env bash
# Rootless Podman as berth needs it. Names differ: netavark is missing on Ubuntu 22.04
# (Podman 3.4 uses CNI plugins there); passt (pasta) is Podman 5's default network on Debian
# 13 and Ubuntu 24.04 and is absent on Debian 11.
STEP=30-podman
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

net=$(first_available netavark golang-github-containernetworking-plugins containernetworking-plugins) ||
    die "no container network stack package (netavark or CNI plugins) in the archive"
extra=()
if [[ "$net" == netavark ]] && { installed aardvark-dns || available aardvark-dns; }; then extra+=(aardvark-dns); fi
if installed passt || available passt; then extra+=(passt); fi
apt_install podman uidmap slirp4netns fuse-overlayfs catatonit dbus-user-session \
    busybox-static "$net" "${extra[@]}"
log "$(podman --version)"
