#!/usr/bin/env bash
# The desktop: XFCE with LightDM, and a browser for the services' pages. Skipped for server
# images (BERTH_IMAGE_DESKTOP=0).
STEP=10-desktop
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

if ! desktop_wanted; then
    log "SKIPPED: BERTH_IMAGE_DESKTOP=0 (server image)"
    exit 0
fi
# Explicit packages without recommends: the task packages pull in printing, office and games.
# xfce4-notifyd shows berth's notifications; the panel's systray hosts the tray icon.
apt_install xfce4 xfce4-terminal xfce4-notifyd xfce4-taskmanager \
    lightdm lightdm-gtk-greeter xserver-xorg-core xserver-xorg-video-fbdev \
    xserver-xorg-input-libinput dbus-x11 at-spi2-core fonts-dejavu-core adwaita-icon-theme \
    policykit-1-gnome
# The browser: Debian packages Firefox ESR; on Ubuntu "firefox" is a snap, which needs a
# booted system with snapd (Packer builds are), not a chroot.
if [[ "$OS_ID" == debian ]]; then
    apt_install firefox-esr
elif command -v snap >/dev/null && booted; then
    snap list firefox >/dev/null 2>&1 || { log "snap install firefox"; snap install firefox; }
else
    log "SKIPPED browser: Ubuntu's firefox is a snap and snapd does not run here"
fi
systemctl set-default graphical.target >/dev/null 2>&1
