#!/usr/bin/env bash
# berth itself: the binary, its user unit, the tray and its autostart entry, and `berth setup` for
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
# The tray: its binary and the autostart entry that starts it with every desktop session.
if desktop_wanted; then
    [[ -x "$BERTH_PAYLOAD/bin/berth-tray" ]] || die "no berth-tray binary at $BERTH_PAYLOAD/bin/berth-tray"
    if ! cmp -s "$BERTH_PAYLOAD/bin/berth-tray" /usr/local/bin/berth-tray; then
        install -D -m 0755 "$BERTH_PAYLOAD/bin/berth-tray" /usr/local/bin/berth-tray.new
        mv -f /usr/local/bin/berth-tray.new /usr/local/bin/berth-tray
        log "installed /usr/local/bin/berth-tray"
    fi
    put_file /etc/xdg/autostart/berth-tray.desktop 0644 <"$BERTH_PAYLOAD/units/berth-tray.desktop"
fi
install -d -m 0755 /etc/berth /etc/berth/catalog.d
/usr/local/bin/berth setup --machine-only
