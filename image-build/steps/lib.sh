# shellcheck shell=bash
#
# Shared helpers of the image steps. Every step sources this file, then does one job,
# idempotently: a second run checks and returns. The steps run the same way
#   * under Packer's shell provisioner, in a booted cloud image (Ubuntu 22.04/24.04), and
#   * in a chroot of an mmdebstrap root (Debian 11/12/13), from image-build/build.
#
# Inputs (environment):
#   BERTH_PAYLOAD         directory holding bin/berth, units/, steps/ (default: this dir's parent)
#   BERTH_IMAGE_DESKTOP   1 (default) installs XFCE, LightDM, xrdp; 0 builds a server image
#                         (the compat lane's small VMs)
#   BERTH_IMAGE_PRELOAD   service names whose images go into the shared store (the demo always)
#   BERTH_IMAGE_ARCHIVES  image archives (docker-archive/oci-archive .tar) to load into it
#   BERTH_IMAGE_ZED       a Zed editor .deb or .tar.gz to install (optional)
#   BERTH_IMAGE_PACKAGES  more packages to install (optional; the compat lane's test tools)
set -euo pipefail

BERTH_PAYLOAD=${BERTH_PAYLOAD:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
BERTH_IMAGE_DESKTOP=${BERTH_IMAGE_DESKTOP:-1}
STEP=${STEP:-$(basename "${0%.sh}")}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'berth-image: %s: %s\n' "$STEP" "$*" >&2; }
die() {
    printf 'berth-image: %s: error: %s\n' "$STEP" "$*" >&2
    exit 1
}

[[ "$(id -u)" -eq 0 ]] || die "the image steps run as root (Packer: execute_command with sudo)"
# shellcheck source=/dev/null
. /etc/os-release
OS_ID=$ID                       # debian | ubuntu
OS_VERSION=${VERSION_ID:-0}     # 11, 12, 13 | 22.04, 24.04
OS_CODENAME=${VERSION_CODENAME:-}
case "$OS_ID" in
    debian | ubuntu) ;;
    *) die "unsupported distribution $OS_ID (Debian 11-13 and Ubuntu 22.04/24.04 are)" ;;
esac

# True in a booted system (Packer); false in a chroot, where no service may be started.
booted() {
    [[ -d /run/systemd/system ]] && [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]
}

installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == "ii " ]]
}

available() {
    apt-cache policy "$1" 2>/dev/null | grep -E '^ *Candidate: ' | grep -vq '(none)'
}

# apt-get update once per build (a marker in /run, which is fresh per boot and per chroot run).
apt_update() {
    [[ -e /run/berth-image-apt-updated ]] && return 0
    log "apt-get update"
    apt-get update -q >/dev/null
    : >/run/berth-image-apt-updated
}

# Install the packages not installed yet; nothing at all (not even apt-get update) when all are.
apt_install() {
    local p missing=()
    for p in "$@"; do
        installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || {
        log "packages present: $*"
        return 0
    }
    apt_update
    log "installing: ${missing[*]}"
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
}

# The first of the named packages that the archive has (names differ between releases).
first_available() {
    local p
    for p in "$@"; do
        if installed "$p"; then
            echo "$p"
            return 0
        fi
    done
    apt_update
    for p in "$@"; do
        if available "$p"; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Write FILE with MODE from stdin unless it already has that content.
put_file() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f "$file" ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 0
    fi
    install -D -m "$mode" "$tmp" "$file"
    rm -f "$tmp"
    log "wrote $file"
}

desktop_wanted() { [[ "$BERTH_IMAGE_DESKTOP" == 1 ]]; }
