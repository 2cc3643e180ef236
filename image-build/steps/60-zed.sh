#!/usr/bin/env bash
# The Zed editor, which Debian and Ubuntu do not package: installed from a file the build is
# given (BERTH_IMAGE_ZED: a .deb, or Zed's Linux .tar.gz), skipped loudly otherwise.
STEP=60-zed
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

zed=${BERTH_IMAGE_ZED:-}
if [[ -z "$zed" ]]; then
    log "SKIPPED: no Zed package given (set BERTH_IMAGE_ZED to a .deb or zed-linux-x86_64.tar.gz)"
    exit 0
fi
[[ -f "$zed" ]] || die "BERTH_IMAGE_ZED=$zed does not exist"
case "$zed" in
    *.deb)
        apt_update
        apt-get install -y -q --no-install-recommends "$zed" >/dev/null
        log "installed $(dpkg-deb -f "$zed" Package) from $zed"
        ;;
    *.tar.gz | *.tgz)
        rm -rf /opt/zed.new
        install -d /opt/zed.new
        tar -C /opt/zed.new --strip-components=1 -xzf "$zed"
        rm -rf /opt/zed
        mv /opt/zed.new /opt/zed
        bin=$(find /opt/zed -maxdepth 2 -type f -name zed -perm -u+x | head -n 1)
        [[ -n "$bin" ]] || die "no zed executable in $zed"
        ln -sfn "$bin" /usr/local/bin/zed
        desktop=$(find /opt/zed -name '*.desktop' | head -n 1)
        if [[ -n "$desktop" ]]; then
            sed "s|^Exec=zed|Exec=/usr/local/bin/zed|; s|^TryExec=.*|TryExec=/usr/local/bin/zed|" "$desktop" |
                put_file /usr/share/applications/dev.zed.Zed.desktop 0644
        fi
        log "installed Zed from $zed into /opt/zed"
        ;;
    *) die "BERTH_IMAGE_ZED must be a .deb or a .tar.gz: $zed" ;;
esac
