#!/usr/bin/env bash
# berth itself: the binary, its user unit, the tray's autostart entry, and `berth setup` for
# the machine-wide settings (users are set up at first boot by cloud-init).
STEP=40-berth
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

[[ -x "$BERTH_PAYLOAD/bin/berth" ]] || die "no berth binary at $BERTH_PAYLOAD/bin/berth"
if ! cmp -s "$BERTH_PAYLOAD/bin/berth" /usr/local/bin/berth; then
    install -D -m 0755 "$BERTH_PAYLOAD/bin/berth" /usr/local/bin/berth.new
    mv -f /usr/local/bin/berth.new /usr/local/bin/berth
    log "installed /usr/local/bin/berth"
fi
put_file /usr/lib/systemd/user/berth.service 0644 <"$BERTH_PAYLOAD/units/berth.service"
# The tray comes with its own issue; its entry is in place now. TryExec makes session managers
# skip the entry while /usr/local/bin/berth-tray does not exist, so it is harmless until then.
if desktop_wanted; then
    put_file /etc/xdg/autostart/berth-tray.desktop 0644 <"$BERTH_PAYLOAD/units/berth-tray.desktop"
fi
install -d -m 0755 /etc/berth /etc/berth/catalog.d
/usr/local/bin/berth setup --machine-only
