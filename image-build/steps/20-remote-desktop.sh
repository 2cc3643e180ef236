#!/usr/bin/env bash
# Remote desktop for Guacamole or Kasm: xrdp with the Xorg backend, serving the XFCE session
# on port 3389. Skipped for server images.
STEP=20-remote-desktop
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

if ! desktop_wanted; then
    log "SKIPPED: BERTH_IMAGE_DESKTOP=0 (server image)"
    exit 0
fi
apt_install xrdp xorgxrdp
# xrdp reads its TLS key from the ssl-cert group's files.
if getent group ssl-cert >/dev/null && ! id -nG xrdp | grep -qw ssl-cert; then
    usermod -aG ssl-cert xrdp
fi
# RDP sessions run /etc/X11/Xsession, which starts the x-session-manager alternative: XFCE's.
if command -v xfce4-session >/dev/null; then
    update-alternatives --set x-session-manager /usr/bin/xfce4-session >/dev/null
fi
systemctl enable xrdp >/dev/null 2>&1
