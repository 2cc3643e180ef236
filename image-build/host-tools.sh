# shellcheck shell=bash
#
# Installs the build host's tools from Debian's packages. On Debian 12 QEMU, qemu-utils,
# mmdebstrap and cloud-image-utils come from bookworm-backports (the machines carry
# qemu-utils from there already, so the plain bookworm qemu-system-x86 cannot be installed
# beside it): the source is added here when it is missing.

_host_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == "ii " ]]
}

# Packages taken from backports on bookworm.
_HOST_BACKPORTS=" qemu-system-x86 qemu-utils mmdebstrap cloud-image-utils "

host_tools() {
    local p missing=() bp=() plain=()
    for p in "$@"; do
        _host_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    # shellcheck source=/dev/null
    . /etc/os-release
    for p in "${missing[@]}"; do
        if [[ "${VERSION_CODENAME:-}" == bookworm && "$_HOST_BACKPORTS" == *" $p "* ]]; then
            bp+=("$p")
        else
            plain+=("$p")
        fi
    done
    if ((${#bp[@]})) && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
            'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
            >/etc/apt/sources.list.d/bookworm-backports.sources
        echo "host-tools: added the bookworm-backports source" >&2
    fi
    echo "host-tools: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    if ((${#bp[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 -t bookworm-backports "${bp[@]}" >/dev/null
    fi
    if ((${#plain[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${plain[@]}" >/dev/null
    fi
}
