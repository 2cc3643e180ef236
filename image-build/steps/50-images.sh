#!/usr/bin/env bash
# Preloaded images in berth's shared read-only image store (/usr/lib/berth/images): the demo
# image always, built offline from busybox-static; others from BERTH_IMAGE_ARCHIVES (offline)
# or pulled for the services in BERTH_IMAGE_PRELOAD (needs their registries). `berth setup`
# lists the store in every user's storage.conf, so first boot pulls nothing.
STEP=50-images
. "${BERTH_PAYLOAD:-$(dirname "$0")/..}/steps/lib.sh"

store=/usr/lib/berth/images
runroot=/run/berth-image-store
# The store's files belong to the user that will run them. A rootless container sees files of
# ids outside its user namespace as `nobody` and cannot write below them (Podman itself fails
# creating /etc/mtab in the image), so the layers are stored the way that user's own rootless
# storage would hold them: container root as UID, container ids 1.. from SUBUID on. The
# default is what the first user of a fresh machine gets (uid 1000, subordinate ids
# 100000:65536, as useradd and `berth setup` allocate them); `berth setup` checks each user
# against the store's ids and lists the store only for users they fit.
IFS=: read -r s_uid s_sub s_count <<<"${BERTH_IMAGE_STORE_IDS:-1000:100000:65536}"
ids="uid=$s_uid subid=$s_sub count=$s_count"
if [[ -f "$store/berth-store-ids" && "$(cat "$store/berth-store-ids")" != "$ids" ]]; then
    log "the store was made for other ids ($(cat "$store/berth-store-ids")): rebuilding it"
    rm -rf "$store"
fi
install -d -m 0755 "$store" "$runroot"
conf=$runroot/storage.conf
cat >"$conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$store"
runroot = "$runroot"
[storage.options]
remap-uids = "0:$s_uid:1:1:$s_sub:$s_count"
remap-gids = "0:$s_uid:1:1:$s_sub:$s_count"
CONF
pm() { CONTAINERS_STORAGE_CONF=$conf podman "$@"; }

# The demo image: the same recipe as the development scripts (scripts/lib/env.sh).
demo=localhost/berth-demo:1
applets=(sh httpd wget nc sleep cat echo ls mkdir env true false ps id hostname grep printf kill
    head tail rm touch)
html='<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>berth demo</title></head>
<body>
<h1>berth demo</h1>
<p>Served by busybox httpd from the offline image localhost/berth-demo:1.</p>
</body>
</html>'
label=$({ echo "recipe=1"; echo "applets=${applets[*]}"; sha256sum </bin/busybox; echo "$html"; } |
    sha256sum | cut -c1-32)
if [[ "$(pm image inspect --format '{{index .Config.Labels "io.berth.content"}}' "$demo" 2>/dev/null)" == "$label" ]]; then
    log "$demo is present"
else
    tmp=$(mktemp -d)
    mkdir -p "$tmp/root/bin" "$tmp/root/www" "$tmp/root/etc" "$tmp/root/tmp" "$tmp/root/proc" \
        "$tmp/root/sys" "$tmp/root/dev"
    chmod 1777 "$tmp/root/tmp"
    install -m 0755 /bin/busybox "$tmp/root/bin/busybox"
    for a in "${applets[@]}"; do ln -s busybox "$tmp/root/bin/$a"; done
    printf '%s\n' "$html" >"$tmp/root/www/index.html"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$tmp/root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/root/etc/group"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/root" -cf "$tmp/root.tar" .
    pm import --quiet --change "LABEL io.berth.content=$label" \
        --change 'CMD ["/bin/httpd","-f","-v","-p","8080","-h","/www"]' --change 'EXPOSE 8080' \
        "$tmp/root.tar" "$demo" >/dev/null
    rm -rf "$tmp"
    log "built $demo"
fi

for archive in ${BERTH_IMAGE_ARCHIVES:-}; do
    log "loading $archive"
    pm load --quiet -i "$archive" >/dev/null
done
for svc in ${BERTH_IMAGE_PRELOAD:-}; do
    file=$BERTH_PAYLOAD/catalog/$svc.toml
    [[ -f "$file" ]] || die "BERTH_IMAGE_PRELOAD: no catalog file for $svc ($file)"
    for image in $(sed -n 's/^image *= *"\([^"]*\)".*/\1/p' "$file"); do
        if pm image exists "$image"; then
            log "$image ($svc) is present"
        else
            log "pulling $image for $svc"
            pm pull --quiet "$image" >/dev/null || die "cannot pull $image for $svc (is its registry reachable?)"
        fi
    done
done

# Podman makes its metadata root-only; rootless users read the store (never write it), so open
# the directories and metadata files for reading. The images' own files keep their modes.
chmod 0755 "$store" "$store"/overlay "$store"/overlay-images "$store"/overlay-layers "$store"/overlay/l
find "$store/overlay" -mindepth 1 -maxdepth 1 -type d -exec chmod 0755 {} +
find "$store/overlay-images" -mindepth 1 -maxdepth 1 -type d -exec chmod 0755 {} +
find "$store/overlay-images" "$store/overlay-layers" -type f -exec chmod a+r {} +
find "$store/overlay" -mindepth 2 -maxdepth 2 -name diff -type d -exec chmod a+rx {} +
chmod a+r "$store"/*.lock "$store"/overlay-images/*.lock "$store"/overlay-layers/*.lock 2>/dev/null || true
printf '%s\n' "$ids" >"$store/berth-store-ids"
chmod 0644 "$store/berth-store-ids"
pm images --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | sed "s/^/berth-image: 50-images: in the shared store ($ids): /" >&2
rm -rf "$runroot"
