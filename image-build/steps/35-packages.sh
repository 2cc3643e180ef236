#!/usr/bin/env bash
# Packages the builder asks for besides berth's own (BERTH_IMAGE_PACKAGES; image-build/compat
# puts the integration suite's tools there). Names an archive lacks are reported and skipped.
STEP=35-packages
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

want=()
for p in ${BERTH_IMAGE_PACKAGES:-}; do
    if installed "$p"; then
        want+=("$p")
    elif { apt_update && available "$p"; }; then
        want+=("$p")
    else
        log "not in this archive, skipped: $p"
    fi
done
((${#want[@]})) || exit 0
apt_install "${want[@]}"
