# shellcheck shell=bash
#
# Sourced library that builds berth's real test environment: rootless Podman
# driven by a real `systemd --user` manager and a real user D-Bus.
#
# It has to work in two very different places:
#   * a fresh Debian 12 VM where we are root, PID 1 is NOT systemd and cgroups
#     are in hybrid mode (v1 controllers plus an empty v2 tree at
#     /sys/fs/cgroup/unified) - nothing is installed and no user session exists;
#   * an ordinary Ubuntu (22.04 / 24.04) or Debian desktop, run as the logged-in
#     user, whose `systemd --user` is already running.
#
# Every function is idempotent: a second run only checks and returns quickly.
# Progress goes to stderr so that callers can keep stdout for machine-readable
# output (scripts/test-env prints `export` lines there).
#
# Usage:  . scripts/lib/env.sh   (the caller should run with `set -euo pipefail`)

# Guard against being sourced twice (the readonly constants below would fail).
if [[ -n "${BERTH_ENV_LIB_LOADED:-}" ]]; then
    return 0
fi
BERTH_ENV_LIB_LOADED=1

# Root-owned places: PID files and logs written by root must never live in a
# directory the test user controls (a planted symlink would redirect them).
readonly BERTH_ENV_STATE_DIR=/run/berth-env
readonly BERTH_ENV_LOG_DIR=/var/log/berth-env
# A sane PATH for commands run as another user (root's PATH may not be set up
# for them, and a desktop user's may contain odd entries).
readonly BERTH_ENV_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Marker put in every file this library writes, so later runs recognise them.
readonly BERTH_ENV_MARK="managed by berth scripts/lib/env.sh"
# Bump when the demo image recipe changes: it is part of the content label, so
# existing images are rebuilt instead of silently kept.
readonly BERTH_ENV_IMAGE_RECIPE=1

# Packages needed for the real environment. Package names are the Debian /
# Ubuntu ones; each is checked with dpkg-query first so a second run does not
# touch apt at all.
BERTH_ENV_PACKAGES=(
    podman runc conmon uidmap slirp4netns fuse-overlayfs catatonit
    dbus dbus-user-session
    busybox-static           # static /bin/busybox for the offline demo images
    systemd                  # systemctl, busctl, systemd-analyze, systemd --user,
                             # systemd-journald and journalctl (journald test)
    procps                   # pgrep/ps, used to find the user manager's PID
    iproute2 curl            # tests probe published ports and the API socket
    util-linux passwd tar    # setpriv/setsid/su, useradd/usermod, image tarballs
)
# Only for the test suite (scripts/test-env sets BERTH_ENV_WITH_TEST_PACKAGES=1):
# a VM running berth must not get a Prometheus server.
BERTH_ENV_TEST_PACKAGES=(
    prometheus               # prometheus, promtool: tests/metrics.rs scrapes berth for real
    cloud-init               # `cloud-init schema` and python3-yaml: tests/cloud_init.rs
    chromium                 # tests/web.rs drives the local web page in a real browser
    chromium-driver          #   through its WebDriver
    minisign                 # the admins' signing tool: tests/remote.rs signs a catalog with it
    haskell-status-notifier-item-utils  # status-notifier-watcher: tests/tray.rs's tray host
    xvfb xfce4-panel         # tests/tray.rs: the tray in a real XFCE panel on an X screen,
    xfconf imagemagick xdotool  #   photographed (import) and clicked (xdotool)
)
# Podman needs a container network stack (Debian's containers-common depends
# on the virtual package "container-network-stack"). With --no-install-recommends
# apt would pick any provider; name one explicitly. The first one available in
# the configured archives wins (netavark is absent from Ubuntu 22.04).
BERTH_ENV_NETWORK_STACK=(netavark golang-github-containernetworking-plugins)

# ---------------------------------------------------------------------------
# Messages and preconditions
# ---------------------------------------------------------------------------

berth_env_log() {
    printf 'berth-env: %s\n' "$*" >&2
}

# Print one clear line saying what is missing and stop the calling script.
# Exit status 2 keeps "environment not usable" apart from test failures (1).
berth_env_die() {
    printf 'berth-env: error: %s\n' "$*" >&2
    exit 2
}

berth_env_is_root() {
    [[ "$(id -u)" -eq 0 ]]
}

# True when PID 1 is systemd. /run/systemd/system cannot be used for this:
# berth_env_user_session itself creates it on machines without systemd.
berth_env_pid1_is_systemd() {
    [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]
}

# True when the cgroup layout is hybrid or legacy (not a pure cgroup v2 mount).
berth_env_cgroup_not_unified() {
    [[ -d /sys/fs/cgroup/unified ]] || [[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]]
}

# A machine without systemd as PID 1, or with hybrid/legacy cgroups (the CI
# and development VMs): Podman needs the extra settings below there.
berth_env_is_special_machine() {
    ! berth_env_pid1_is_systemd || berth_env_cgroup_not_unified
}

# Die unless every named command is on PATH; suggest the package to install.
berth_env_require_commands() {
    local cmd missing=()
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        berth_env_die "missing command(s): ${missing[*]} - install them with: sudo apt install $(berth_env_packages_for "${missing[@]}")"
    fi
}

# Map command names to the Debian/Ubuntu package that ships them.
berth_env_packages_for() {
    local cmd pkgs=()
    for cmd in "$@"; do
        case "$cmd" in
            systemd-analyze | systemctl | busctl) pkgs+=(systemd) ;;
            busybox) pkgs+=(busybox-static) ;;
            newuidmap | newgidmap) pkgs+=(uidmap) ;;
            setpriv | setsid | runuser) pkgs+=(util-linux) ;;
            *) pkgs+=("$cmd") ;;
        esac
    done
    printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//'
}

# Die unless we are root, or the current user already has a working systemd
# user manager (a desktop session): without either nothing can be set up.
berth_env_require_root_or_session() {
    berth_env_is_root && return 0
    [[ -n "${XDG_RUNTIME_DIR:-}" ]] ||
        berth_env_die "not root and XDG_RUNTIME_DIR is unset: run as root, or from a logged-in desktop session"
    berth_env_require_commands systemctl
    local state
    state=$(systemctl --user is-system-running 2>/dev/null || true)
    case "$state" in
        running | degraded | starting) ;;
        *) berth_env_die "not root and 'systemctl --user' does not work here (state: ${state:-no answer}): run as root, or from a logged-in desktop session" ;;
    esac
}

berth_env_require_root() {
    berth_env_is_root || berth_env_die "$1 needs root"
}

# Serialise concurrent set-up runs (two engineers, or CI next to a session):
# without it both could see "no user manager" and start one each. Holds an
# exclusive lock on a root-owned file until the calling shell exits. The fd
# is closed for the user manager we spawn, which would otherwise hold the
# lock for its whole life.
BERTH_ENV_LOCK_FD=""
berth_env_lock() {
    berth_env_is_root || return 0
    [[ -z "$BERTH_ENV_LOCK_FD" ]] || return 0
    install -d -m 0755 "$BERTH_ENV_STATE_DIR"
    exec {BERTH_ENV_LOCK_FD}>"$BERTH_ENV_STATE_DIR/setup.lock"
    flock -w 300 "$BERTH_ENV_LOCK_FD" ||
        berth_env_die "another berth set-up run holds $BERTH_ENV_STATE_DIR/setup.lock for over 300 s"
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------

_berth_env_pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == "ii " ]]
}

_berth_env_pkg_available() {
    # apt-cache prints nothing useful for names without a candidate version.
    apt-cache policy "$1" 2>/dev/null | grep -E '^ *Candidate: ' | grep -vq '(none)'
}

# Install what is missing (as root, where apt-get exists). Does nothing, not
# even `apt-get update`, when everything is already installed.
berth_env_install_packages() {
    if ! berth_env_is_root || ! command -v apt-get >/dev/null 2>&1; then
        berth_env_log "not root or no apt-get: skipping package installation"
        return 0
    fi
    local pkg missing=() net_ok=0 wanted=("${BERTH_ENV_PACKAGES[@]}")
    if [[ "${BERTH_ENV_WITH_TEST_PACKAGES:-0}" == 1 ]]; then
        wanted+=("${BERTH_ENV_TEST_PACKAGES[@]}")
    fi
    for pkg in "${wanted[@]}"; do
        _berth_env_pkg_installed "$pkg" || missing+=("$pkg")
    done
    for pkg in "${BERTH_ENV_NETWORK_STACK[@]}"; do
        if _berth_env_pkg_installed "$pkg"; then
            net_ok=1
            break
        fi
    done
    if ((${#missing[@]} == 0 && net_ok)); then
        berth_env_log "packages: all present"
        return 0
    fi
    # apt and dpkg are chatty even with -qq: keep their output in a log and
    # show its end only when something goes wrong.
    install -d -m 0755 "$BERTH_ENV_LOG_DIR"
    local aptlog=$BERTH_ENV_LOG_DIR/apt.log
    berth_env_log "apt-get update (log: $aptlog)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get update -q >"$aptlog" 2>&1; then
        tail -n 20 "$aptlog" >&2
        berth_env_die "apt-get update failed; see $aptlog"
    fi
    if ((!net_ok)); then
        for pkg in "${BERTH_ENV_NETWORK_STACK[@]}"; do
            if _berth_env_pkg_available "$pkg"; then
                missing+=("$pkg")
                net_ok=1
                break
            fi
        done
        ((net_ok)) || berth_env_die "no container network stack package available (${BERTH_ENV_NETWORK_STACK[*]})"
    fi
    berth_env_log "installing: ${missing[*]}"
    # --no-install-recommends: everything needed is listed explicitly, and
    # recommends (buildah, ...) only slow down a fresh machine.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >>"$aptlog" 2>&1; then
        tail -n 20 "$aptlog" >&2
        berth_env_die "apt-get install failed for: ${missing[*]}; see $aptlog"
    fi
}

# ---------------------------------------------------------------------------
# Podman configuration for hybrid-cgroup machines without systemd as PID 1
# ---------------------------------------------------------------------------

# Settings from the environment notes: crun cannot run containers with hybrid
# cgroups, and raising RLIMIT_NOFILE/RLIMIT_NPROC to Podman's defaults is not
# permitted here, so ask for explicit lower limits.
_berth_env_containers_conf() {
    cat <<EOF
# $BERTH_ENV_MARK
# Needed where PID 1 is not systemd and cgroups are hybrid: crun fails there
# ("cgroups in hybrid mode not supported") and higher rlimits are refused.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
}

# True if FILE already carries both settings (whoever wrote it).
_berth_env_conf_has_settings() {
    local file=$1
    [[ -f "$file" ]] &&
        grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$file" &&
        grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=.*nofile=' "$file"
}

# Podman 4.3.1 (Debian 12) reads drop-ins from /etc/containers/containers.conf.d/
# (documented in its containers.conf(5), and checked: the ulimits in a drop-in
# reach the containers). For Podman 3.x (Ubuntu 22.04) we do not rely on it
# and write the main file instead.
_berth_env_podman_major() {
    # `podman --version` ("podman version 4.3.1") does not touch any storage,
    # unlike `podman version`, which would initialise root's.
    podman --version 2>/dev/null | awk '{ split($NF, v, "."); print v[1] }'
}

berth_env_configure_podman() {
    if ! berth_env_is_special_machine; then
        berth_env_log "podman: systemd is PID 1 with unified cgroups: default configuration is fine"
        return 0
    fi
    berth_env_require_root "configuring podman for this machine"
    command -v podman >/dev/null 2>&1 || berth_env_die "podman is not installed (run berth_env_install_packages)"

    local main=/etc/containers/containers.conf
    local dropin_dir=/etc/containers/containers.conf.d
    local dropin=$dropin_dir/berth.conf
    local want major
    want=$(_berth_env_containers_conf)
    major=$(_berth_env_podman_major)

    if _berth_env_conf_has_settings "$main" || _berth_env_conf_has_settings "$dropin"; then
        berth_env_log "podman: runc and default_ulimits already configured"
    elif [[ "${major:-0}" -ge 4 ]]; then
        # A drop-in never clobbers the administrator's containers.conf and
        # overrides only the keys it sets.
        install -d -m 0755 "$dropin_dir"
        printf '%s\n' "$want" >"$dropin.tmp"
        chmod 0644 "$dropin.tmp"
        mv -f "$dropin.tmp" "$dropin"
        berth_env_log "podman: wrote $dropin"
    else
        # Podman 3.x has no drop-in directory: write the main file, but keep a
        # foreign one aside rather than losing it.
        if [[ -f "$main" ]] && ! grep -qF "$BERTH_ENV_MARK" "$main"; then
            cp -p "$main" "$main.berth-orig"
            berth_env_log "podman: kept the previous $main as $main.berth-orig"
        fi
        install -d -m 0755 /etc/containers
        printf '%s\n' "$want" >"$main.tmp"
        chmod 0644 "$main.tmp"
        mv -f "$main.tmp" "$main"
        berth_env_log "podman: wrote $main"
    fi

    # slirp4netns (rootless networking, port publishing) opens /dev/net/tun as
    # the user; on these VMs the node is root-only or missing.
    if [[ ! -c /dev/net/tun ]]; then
        install -d -m 0755 /dev/net
        mknod -m 0666 /dev/net/tun c 10 200
        berth_env_log "podman: created /dev/net/tun"
    fi
    if [[ "$(stat -c %a /dev/net/tun)" != 666 ]]; then
        chmod 0666 /dev/net/tun
        berth_env_log "podman: made /dev/net/tun usable by users"
    fi

    # systemd as PID 1 makes "/" a shared mount at boot; without it rootless
    # Podman warns '"/" is not a shared mount, this could cause issues or
    # missing mounts with rootless containers' on every new user namespace.
    if command -v findmnt >/dev/null 2>&1 &&
        [[ "$(findmnt -no PROPAGATION / 2>/dev/null)" == private ]]; then
        mount --make-rshared /
        berth_env_log "podman: made / a shared mount (as systemd would at boot)"
    fi
}

# ---------------------------------------------------------------------------
# Running things as the test user
# ---------------------------------------------------------------------------

_berth_env_uid() {
    id -u "$1" 2>/dev/null || berth_env_die "no such user: $1"
}

_berth_env_home() {
    getent passwd "$1" | cut -d: -f6
}

# Run CMD... as USER with the environment of a login session: HOME, USER,
# LOGNAME, PATH, XDG_RUNTIME_DIR and the user bus address (those two only when
# /run/user/UID exists); cwd is the user's
# home, stdin is /dev/null. The environment is built from scratch (env -i) so
# none of root's variables leak in. setpriv is used rather than su/runuser:
# it goes through no PAM stack (whose pam_systemd would look for logind on a
# system bus that does not exist here) and execs directly, so exit codes and
# signals pass through unchanged.
berth_env_as_user() {
    local user=$1
    shift
    (($#)) || berth_env_die "berth_env_as_user: no command given"
    local uid home runtime
    uid=$(_berth_env_uid "$user")
    home=$(_berth_env_home "$user")
    runtime=/run/user/$uid
    local -a envs=(
        HOME="$home" USER="$user" LOGNAME="$user" SHELL=/bin/bash
        PATH="$BERTH_ENV_PATH" LANG=C.UTF-8
    )
    # Only point at the runtime dir once it exists: a dangling
    # XDG_RUNTIME_DIR makes runc fail ("mkdir /run/user/N: permission
    # denied"), while without it Podman falls back to /tmp/podman-run-N.
    if [[ -d "$runtime" ]]; then
        envs+=(XDG_RUNTIME_DIR="$runtime" DBUS_SESSION_BUS_ADDRESS="unix:path=$runtime/bus")
    fi
    if [[ "$(id -u)" -eq "$uid" ]]; then
        # Already that user (desktop): keep the session's own variables,
        # filling in the two a bare shell (cron, ssh without PAM) may lack.
        (
            if [[ -d "$runtime" ]]; then
                export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$runtime}
                export DBUS_SESSION_BUS_ADDRESS=${DBUS_SESSION_BUS_ADDRESS:-unix:path=$XDG_RUNTIME_DIR/bus}
            fi
            cd "$home" && exec "$@" </dev/null
        )
    elif berth_env_is_root; then
        (cd "$home" && exec setpriv --reuid="$uid" --regid="$(id -g "$user")" --init-groups \
            env -i "${envs[@]}" "$@" </dev/null)
    else
        berth_env_die "cannot run commands as $user without root"
    fi
}

# Print the variables a shell needs to talk to USER's manager, bus and Podman.
berth_env_user_exports() {
    local user=$1 uid
    uid=$(_berth_env_uid "$user")
    printf 'export BERTH_TEST_USER=%q\n' "$user"
    printf 'export BERTH_TEST_UID=%q\n' "$uid"
    printf 'export XDG_RUNTIME_DIR=%q\n' "/run/user/$uid"
    printf 'export DBUS_SESSION_BUS_ADDRESS=%q\n' "unix:path=/run/user/$uid/bus"
    printf 'export BERTH_TEST_PODMAN_SOCKET=%q\n' "/run/user/$uid/podman/podman.sock"
}

# ---------------------------------------------------------------------------
# The test user and its systemd user manager
# ---------------------------------------------------------------------------

# The berth binary that runs `berth setup`: BERTH_SETUP_BIN, else a debug build of this
# checkout (scripts/test builds it next anyway; scripts/run passes its release build).
_berth_env_setup_bin() {
    if [[ -n "${BERTH_SETUP_BIN:-}" ]]; then
        echo "$BERTH_SETUP_BIN"
        return 0
    fi
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    if ! command -v cargo >/dev/null && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    berth_env_log "building berth for berth setup (debug)"
    (cd "$repo" && cargo build --quiet --bin berth >&2) || berth_env_die "cargo build of berth failed"
    echo "$repo/target/debug/berth"
}

# What a real machine needs too is `berth setup`'s job (as cloud-init runs it at first boot):
# the user (created here if missing), subordinate ids, overlay storage in the user's
# storage.conf, lingering, and berth's unit enabled unless BERTH_ENV_NO_UNIT=1 (the test
# user, whose tests start their own daemons). Its report goes to stderr.
_berth_env_setup_user() {
    local user=$1 bin
    bin=$(_berth_env_setup_bin)
    local -a args=(setup --user "$user" --create-users)
    [[ "${BERTH_ENV_NO_UNIT:-0}" == 1 ]] && args+=(--no-unit)
    "$bin" "${args[@]}" | sed 's/^/berth-env: setup: /' >&2 ||
        berth_env_die "berth setup for $user failed"
}

# State of USER's manager as `systemctl --user is-system-running` reports it
# ("running", "degraded", "starting", ...), or "" if there is no answer.
_berth_env_manager_state() {
    local user=$1
    berth_env_as_user "$user" systemctl --user is-system-running 2>/dev/null || true
}

_berth_env_manager_up() {
    local user=$1 uid state
    uid=$(_berth_env_uid "$user")
    state=$(_berth_env_manager_state "$user")
    [[ "$state" == running || "$state" == degraded ]] && [[ -S /run/user/$uid/bus ]]
}

_berth_env_pidfile() {
    echo "$BERTH_ENV_STATE_DIR/user-manager-$(_berth_env_uid "$1").pid"
}

# The PID recorded for USER's manager, if that process still is a systemd
# owned by USER (guards against a recycled PID).
berth_env_user_manager_pid() {
    local user=$1 uid pidfile pid
    uid=$(_berth_env_uid "$user")
    pidfile=$(_berth_env_pidfile "$user")
    [[ -r "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == systemd ]] || return 1
    [[ "$(stat -c %u "/proc/$pid" 2>/dev/null)" == "$uid" ]] || return 1
    echo "$pid"
}

# Start `systemd --user` for USER on a machine whose PID 1 is not systemd,
# following the recipe in the environment notes.
_berth_env_spawn_user_manager() {
    local user=$1 uid gid runtime log pidfile rel
    uid=$(_berth_env_uid "$user")
    gid=$(id -g "$user")
    runtime=/run/user/$uid
    log=$BERTH_ENV_LOG_DIR/user-manager-$user.log
    pidfile=$(_berth_env_pidfile "$user")

    # The runtime dir pam_systemd/logind would normally create.
    install -d -m 0700 -o "$uid" -g "$gid" "$runtime"
    # systemd --user checks this directory to believe it runs under systemd.
    install -d -m 0755 /run/systemd/system
    install -d -m 0755 "$BERTH_ENV_STATE_DIR" "$BERTH_ENV_LOG_DIR"

    # The manager's own cgroup in both the named v1 "systemd" hierarchy and the
    # v2 one, owned by the user so it can create its units' cgroups below.
    rel=user.slice/user-$uid.slice/user@$uid.service
    local cg cgdirs=()
    for cg in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [[ -f "$cg/cgroup.procs" ]] && [[ "$cg" != /sys/fs/cgroup || "$(stat -fc %T "$cg")" == cgroup2fs ]]; then
            mkdir -p "$cg/$rel"
            chown -R "$uid:$gid" "$cg/$rel"
            cgdirs+=("$cg/$rel")
        fi
    done
    ((${#cgdirs[@]})) || berth_env_die "no writable cgroup hierarchy found under /sys/fs/cgroup"

    berth_env_log "user: starting systemd --user for $user (log: $log)"
    # The subshell moves itself into those cgroups, then becomes
    # `setsid su ...`: su, its shell and systemd inherit the cgroups, and
    # setsid detaches them from our session so they outlive this script.
    (
        for cg in "${cgdirs[@]}"; do
            echo "$BASHPID" >"$cg/cgroup.procs"
        done
        # The manager must not inherit the set-up lock (see berth_env_lock).
        if [[ -n "$BERTH_ENV_LOCK_FD" ]]; then
            exec {BERTH_ENV_LOCK_FD}>&-
        fi
        exec setsid su "$user" -c "export XDG_RUNTIME_DIR=$runtime; exec /lib/systemd/systemd --user"
    ) </dev/null >>"$log" 2>&1 &
    local su_pid=$! pid="" i
    # su stays as the parent (it closes the PAM session at the end); the
    # manager is its child. Record the manager itself so it can be stopped
    # precisely; SIGTERM makes it run exit.target and leave, and su follows.
    for ((i = 0; i < 50; i++)); do
        if kill -0 "$su_pid" 2>/dev/null; then
            pid=$(pgrep -P "$su_pid" -u "$uid" -x systemd || true)
        else
            # With job control on (library sourced interactively) the
            # subshell leads its process group, setsid forks and $! exits at
            # once: fall back to the user's newest systemd.
            pid=$(pgrep -n -u "$uid" -x systemd || true)
        fi
        [[ -n "$pid" ]] && break
        sleep 0.1
    done
    [[ -n "$pid" ]] || berth_env_die "systemd --user for $user did not start; see $log"
    echo "$pid" >"$pidfile.tmp"
    mv -f "$pidfile.tmp" "$pidfile"
}

# Wait (bounded) until USER's manager reports running/degraded and its bus
# socket exists.
_berth_env_wait_manager() {
    local user=$1 deadline=$((SECONDS + ${2:-15}))
    while ! _berth_env_manager_up "$user"; do
        if ((SECONDS >= deadline)); then
            berth_env_die "systemd --user for $user not ready (state: $(_berth_env_manager_state "$user")); see $BERTH_ENV_LOG_DIR/user-manager-$user.log"
        fi
        sleep 0.2
    done
}

# Start podman.socket in USER's manager and check the API answers.
_berth_env_start_podman_socket() {
    local user=$1 uid sock
    uid=$(_berth_env_uid "$user")
    sock=/run/user/$uid/podman/podman.sock
    berth_env_as_user "$user" systemctl --user start podman.socket ||
        berth_env_die "could not start podman.socket for $user"
    # The first request starts podman.service through socket activation; the
    # server ignores the version in the path, so /v4.0.0/ also fits 3.4 and 5.
    local answer="" i
    for ((i = 0; i < 30; i++)); do
        if command -v curl >/dev/null 2>&1; then
            answer=$(berth_env_as_user "$user" curl -sS --max-time 10 --unix-socket "$sock" http://d/v4.0.0/libpod/_ping 2>/dev/null || true)
        else
            berth_env_as_user "$user" podman --remote --url "unix://$sock" version >/dev/null 2>&1 && answer=OK
        fi
        [[ "$answer" == OK ]] && break
        sleep 0.3
    done
    [[ "$answer" == OK ]] || berth_env_die "the Podman API at $sock does not answer for $user"
    berth_env_log "podman: API answers at $sock"
}

# Without systemd as PID 1 nothing runs journald: start Debian's own
# systemd-journald (volatile storage under /run/log/journal), so services of
# the user manager log to the journal as on a real machine and `journalctl`
# shows them. Its PID is recorded; berth_env_stop_journald stops exactly it.
# On a machine booted with systemd this does nothing.
# Lets USER read the system journal, where the journald started above keeps
# every user's entries (volatile storage here keeps no per-user files, so
# `journalctl --user` and `systemctl --user status` show nothing to users
# outside group systemd-journal). A desktop with systemd as PID 1 needs none
# of this: each user reads their own journal there.
berth_env_journal_reader() {
    local user=$1
    berth_env_pid1_is_systemd && return 0
    getent group systemd-journal >/dev/null || return 0
    if ! id -nG "$user" | grep -qw systemd-journal; then
        usermod -aG systemd-journal "$user"
        berth_env_log "journald: $user may read the journal (group systemd-journal)"
    fi
}

berth_env_journald() {
    berth_env_pid1_is_systemd && return 0
    berth_env_require_root "starting systemd-journald"
    local pidfile=$BERTH_ENV_STATE_DIR/journald.pid pid
    if [[ -S /run/systemd/journal/socket ]] && pid=$(cat "$pidfile" 2>/dev/null) &&
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == systemd-journal ]]; then
        berth_env_log "journald: already running (PID $pid)"
        return 0
    fi
    [[ -x /lib/systemd/systemd-journald ]] || berth_env_die "no /lib/systemd/systemd-journald (package systemd)"
    install -d -m 0755 "$BERTH_ENV_STATE_DIR" "$BERTH_ENV_LOG_DIR"
    (
        if [[ -n "$BERTH_ENV_LOCK_FD" ]]; then
            exec {BERTH_ENV_LOCK_FD}>&-
        fi
        exec setsid /lib/systemd/systemd-journald
    ) </dev/null >>"$BERTH_ENV_LOG_DIR/journald.log" 2>&1 &
    pid=$!
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S /run/systemd/journal/socket && -S /run/systemd/journal/stdout ]] && break
        kill -0 "$pid" 2>/dev/null || berth_env_die "systemd-journald exited; see $BERTH_ENV_LOG_DIR/journald.log"
        sleep 0.1
    done
    [[ -S /run/systemd/journal/stdout ]] || berth_env_die "systemd-journald did not open its sockets; see $BERTH_ENV_LOG_DIR/journald.log"
    # Ownership and ACLs of the journal files (group systemd-journal may read), as
    # systemd-tmpfiles sets them at boot on a real machine.
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create --prefix /run/log/journal >/dev/null 2>&1 ||
            berth_env_log "journald: systemd-tmpfiles could not set the journal's permissions"
    fi
    echo "$pid" >"$pidfile.tmp"
    mv -f "$pidfile.tmp" "$pidfile"
    berth_env_log "journald: started systemd-journald (PID $pid)"
}

# Make sure USER exists with subordinate ids and overlay storage, has a
# running systemd user manager and D-Bus, and a listening podman.socket.
# As non-root this only works for the current user in a desktop session.
berth_env_user_session() {
    local user=${1:?berth_env_user_session USER}
    if ! berth_env_is_root; then
        [[ "$user" == "$(id -un)" ]] || berth_env_die "setting up a session for $user needs root"
        berth_env_require_root_or_session
        _berth_env_start_podman_socket "$user"
        return 0
    fi

    _berth_env_setup_user "$user"
    local uid
    uid=$(_berth_env_uid "$user")

    if _berth_env_manager_up "$user"; then
        berth_env_log "user: systemd --user for $user already running"
    elif berth_env_pid1_is_systemd; then
        # A normal machine: logind and user@.service do it properly, and
        # lingering keeps the manager alive without a login.
        loginctl enable-linger "$user"
        systemctl start "user@$uid.service"
        _berth_env_wait_manager "$user" 15
    else
        local old
        if old=$(berth_env_user_manager_pid "$user"); then
            # Alive but not answering yet (or wedged): give it the same
            # bounded wait rather than starting a second manager.
            berth_env_log "user: systemd --user for $user (PID $old) exists, waiting for it"
        else
            _berth_env_spawn_user_manager "$user"
        fi
        _berth_env_wait_manager "$user" 15
    fi
    _berth_env_start_podman_socket "$user"
}

# Stop the manager started by berth_env_user_session, by its recorded PID only.
berth_env_stop_user_session() {
    local user=${1:?berth_env_stop_user_session USER}
    berth_env_require_root "stopping the user manager of $user"
    if berth_env_pid1_is_systemd; then
        systemctl stop "user@$(_berth_env_uid "$user").service"
        return 0
    fi
    local pid pidfile i
    pidfile=$(_berth_env_pidfile "$user")
    if ! pid=$(berth_env_user_manager_pid "$user"); then
        berth_env_log "user: no recorded systemd --user for $user is running"
        rm -f "$pidfile"
        return 0
    fi
    # SIGTERM: the user manager starts exit.target, stops its units (and so
    # their containers) and exits.
    kill -TERM "$pid"
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        berth_env_log "user: systemd --user $pid ignored SIGTERM for 30 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    berth_env_log "user: stopped systemd --user for $user (PID $pid)"
}

# ---------------------------------------------------------------------------
# Offline demo images
# ---------------------------------------------------------------------------

readonly BERTH_ENV_DEMO_IMAGE=localhost/berth-demo:1
readonly BERTH_ENV_BUSYBOX_IMAGE=localhost/berth-busybox:1
BERTH_ENV_APPLETS=(
    sh httpd wget nc sleep cat echo ls mkdir env true false
    ps id hostname grep printf kill head tail rm touch
)

_berth_env_demo_html() {
    cat <<'EOF'
<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>berth demo</title></head>
<body>
<h1>berth demo</h1>
<p>Served by busybox httpd from the offline image localhost/berth-demo:1.</p>
</body>
</html>
EOF
}

_berth_env_find_busybox() {
    local bb
    for bb in /bin/busybox /usr/bin/busybox; do
        [[ -x "$bb" ]] && {
            echo "$bb"
            return 0
        }
    done
    return 1
}

# Build both images for RUNAS_USER (default: the current user) in that user's
# rootless storage, from the host's static busybox; no registry involved.
# Skipped when an image with the same content label already exists.
berth_env_build_demo_image() {
    local user=${1:-$(id -un)}
    local bb
    bb=$(_berth_env_find_busybox) || berth_env_die "no busybox binary: install busybox-static"
    # A dynamically linked busybox (package "busybox") would not run in an
    # empty image. Judge by the libraries ldd lists: for a static-pie binary
    # ldd may exit 0 while saying "statically linked".
    if ldd "$bb" 2>/dev/null | grep -q '=>'; then
        berth_env_die "$bb is dynamically linked: install busybox-static"
    fi
    if [[ "$user" != "$(id -un)" ]]; then
        berth_env_require_root "building images for $user"
    fi

    # The label covers everything that goes into the images.
    local label
    label=$({
        echo "recipe=$BERTH_ENV_IMAGE_RECIPE"
        echo "applets=${BERTH_ENV_APPLETS[*]}"
        sha256sum <"$bb"
        _berth_env_demo_html
    } | sha256sum | cut -c1-32)

    local -a todo=()
    local image
    for image in "$BERTH_ENV_DEMO_IMAGE" "$BERTH_ENV_BUSYBOX_IMAGE"; do
        if [[ "$(berth_env_as_user "$user" podman image inspect \
            --format '{{index .Config.Labels "io.berth.content"}}' "$image" 2>/dev/null)" == "$label" ]]; then
            berth_env_log "image: $image is up to date"
        else
            todo+=("$image")
        fi
    done
    ((${#todo[@]})) || return 0

    _berth_env_import_images "$user" "$bb" "$label" "${todo[@]}"
}

# Build the root filesystem in a private temp dir, then open only the tarball
# to the user who imports it. A subshell function, so the EXIT trap cleans up
# on every path, berth_env_die included.
_berth_env_import_images() (
    local user=$1 bb=$2 label=$3
    shift 3
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    local root=$tmp/rootfs applet image
    mkdir -p "$root/bin" "$root/www" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    for applet in "${BERTH_ENV_APPLETS[@]}"; do
        ln -s busybox "$root/bin/$applet"
    done
    _berth_env_demo_html >"$root/www/index.html"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    # Owner 0 inside the image (the user itself, once rootless), whoever
    # builds it; sorted names and a fixed mtime keep the tarball reproducible.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$root" -cf "$tmp/rootfs.tar" .
    chmod 0755 "$tmp"
    chmod 0644 "$tmp/rootfs.tar"

    for image in "$@"; do
        local -a changes=(--change "LABEL io.berth.content=$label")
        if [[ "$image" == "$BERTH_ENV_DEMO_IMAGE" ]]; then
            changes+=(--change 'CMD ["/bin/httpd","-f","-v","-p","8080","-h","/www"]'
                --change 'EXPOSE 8080')
        else
            changes+=(--change 'CMD ["/bin/sleep","infinity"]')
        fi
        berth_env_as_user "$user" podman import --quiet "${changes[@]}" \
            "$tmp/rootfs.tar" "$image" >/dev/null ||
            berth_env_die "podman import of $image failed for $user"
        berth_env_log "image: built $image for $user"
    done
)
