#!/usr/bin/env bash
# Base system: what every berth VM needs besides Podman. In a booted cloud image (Packer) the
# first thing is to let cloud-init finish, or apt races it.
STEP=00-base
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

if booted && command -v cloud-init >/dev/null; then
    log "waiting for cloud-init to finish"
    cloud-init status --wait >/dev/null || log "cloud-init reported an error; going on"
fi
apt_install ca-certificates curl sudo less locales cloud-init cloud-guest-utils \
    qemu-guest-agent openssh-server dbus
