#!/usr/bin/env bash
# Make the image a template: no machine identity, no host keys, no cloud-init state (the first
# boot of each VM runs cloud-init afresh), no package lists or downloads.
STEP=90-cleanup
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

# In a chroot build the apt cache is the build host's, bound in; it stays there.
if [[ "${BERTH_IMAGE_APT_CACHE_BOUND:-0}" != 1 ]]; then
    apt-get clean
fi
rm -rf /var/lib/apt/lists/* /run/berth-image-apt-updated
if command -v cloud-init >/dev/null; then
    cloud-init clean --logs >/dev/null 2>&1 || rm -rf /var/lib/cloud/instances /var/lib/cloud/instance
fi
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
# Emptied, not deleted: daemons that drop privileges (xrdp runs as its own user) cannot
# create their log file in /var/log again, and xrdp refuses to start without it.
find /var/log -type f -name '*.gz' -delete 2>/dev/null || true
find /var/log -type f -name '*.log' -exec truncate -s 0 {} + 2>/dev/null || true
log "template cleaned"
