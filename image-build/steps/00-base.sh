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

# cloud-init sets the locale to en_US.UTF-8 unless told otherwise, and fails its locale module
# when that locale was never generated. Debian's locale-gen only builds what /etc/locale.gen
# enables (Ubuntu's takes the name as an argument).
if ! locale -a 2>/dev/null | grep -qix 'en_US.utf8'; then
    if [[ "$OS_ID" == debian ]]; then
        sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
        grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen
        locale-gen >/dev/null
    else
        locale-gen en_US.UTF-8 >/dev/null
    fi
    log "generated the en_US.UTF-8 locale"
fi
# Said in /etc/default/locale too, so cloud-init finds it set and does not generate it again
# at every first boot (70 s under TCG).
if ! grep -qs '^LANG=en_US.UTF-8' /etc/default/locale; then
    update-locale LANG=en_US.UTF-8
    log "LANG=en_US.UTF-8 in /etc/default/locale"
fi
