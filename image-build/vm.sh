# shellcheck shell=bash
#
# One throwaway QEMU VM, shared by image-build/check and image-build/compat: a qcow2 overlay
# of an image (every run boots a clean disk), a NoCloud seed, user-mode networking restricted
# to host forwards (the guest reaches nothing else), the serial console in a log file, ssh with
# a key made for the run. TCG only (KVM does not work on these machines), under `nice` so the
# emulation does not starve other work on the host.
#
# The caller sets, before vm_start:
#   VM_WORK       a private directory for the run (key, seed, overlay, console log, monitor)
#   VM_SSH_PORT   the host port forwarded to the guest's ssh (127.0.0.1 only)
#   VM_USER       the user ssh logs in as
#   VM_NETDEV     optional extra netdev options (",hostfwd=...,guestfwd=...")
#   VM_DRIVES     optional array of extra -drive values (e.g. a payload disk)
#   VM_MEM VM_SMP VM_NICE   memory in MiB (4096), CPUs (2), nice level (10)
# and defines `fail MESSAGE`, which these functions call on errors (it should print the end of
# "$VM_WORK/console.log" and exit). VM_PID is the running QEMU's PID; vm_kill stops exactly it.

VM_PID=""

# The run's ssh key: "$VM_WORK/key" and "$VM_WORK/key.pub".
vm_key() {
    [[ -f "$VM_WORK/key" ]] || ssh-keygen -q -t ed25519 -N '' -C berth-vm -f "$VM_WORK/key"
}

# vm_seed USER_DATA_FILE META_DATA_FILE [NETWORK_CONFIG_FILE]: the NoCloud seed disk
# "$VM_WORK/seed.img".
vm_seed() {
    cloud-init schema --config-file "$1" >/dev/null || fail "the seed's user-data is not valid"
    local -a net=()
    [[ -z "${3:-}" ]] || net=(-N "$3")
    cloud-localds "${net[@]}" "$VM_WORK/seed.img" "$1" "$2"
}

# vm_overlay IMAGE: "$VM_WORK/disk.qcow2", a fresh overlay of IMAGE (qcow2).
vm_overlay() {
    rm -f "$VM_WORK/disk.qcow2"
    qemu-img create -q -f qcow2 -b "$1" -F qcow2 "$VM_WORK/disk.qcow2"
}

# Boot the overlay with the seed; returns once QEMU has daemonized (the guest is booting).
vm_start() {
    local net="user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$VM_SSH_PORT-:22${VM_NETDEV:-}"
    local -a drives=(-drive "file=$VM_WORK/disk.qcow2,if=virtio,format=qcow2"
        -drive "file=$VM_WORK/seed.img,if=virtio,format=raw,readonly=on")
    local d
    for d in "${VM_DRIVES[@]}"; do drives+=(-drive "$d"); done
    rm -f "$VM_WORK/qemu.pid"
    nice -n "${VM_NICE:-10}" qemu-system-x86_64 -accel tcg -smp "${VM_SMP:-2}" -m "${VM_MEM:-4096}" \
        "${drives[@]}" \
        -netdev "$net" -device virtio-net-pci,netdev=n0 \
        -monitor "unix:$VM_WORK/monitor.sock,server,nowait" \
        -display none -serial "file:$VM_WORK/console.log" -daemonize -pidfile "$VM_WORK/qemu.pid" ||
        fail "qemu did not start"
    VM_PID=$(cat "$VM_WORK/qemu.pid")
}

vm_ssh() {
    ssh -q -i "$VM_WORK/key" -p "$VM_SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=8 \
        "$VM_USER@127.0.0.1" "$@"
}

# vm_wait_for SECONDS WHAT CMD...: until CMD succeeds; fails when the VM dies or time runs out.
vm_wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        kill -0 "$VM_PID" 2>/dev/null || fail "the VM died while waiting for $what"
        ((SECONDS < deadline)) || fail "$what not within ${limit}s"
        sleep 2
    done
}

# The ACPI power button (systemd-logind powers off cleanly); waits until QEMU has exited.
vm_powerdown() {
    local limit=${1:-300} deadline
    printf 'system_powerdown\n' | socat - "UNIX-CONNECT:$VM_WORK/monitor.sock" >/dev/null
    deadline=$((SECONDS + limit))
    while kill -0 "$VM_PID" 2>/dev/null; do
        ((SECONDS < deadline)) || fail "the VM did not power off within ${limit}s"
        sleep 2
    done
    VM_PID=""
}

# Stop the VM started by vm_start, by its PID only (TERM, then KILL after 5 s).
vm_kill() {
    [[ -n "$VM_PID" ]] || return 0
    kill "$VM_PID" 2>/dev/null || true
    local _
    for _ in $(seq 50); do kill -0 "$VM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$VM_PID" 2>/dev/null || true
    VM_PID=""
    return 0
}
