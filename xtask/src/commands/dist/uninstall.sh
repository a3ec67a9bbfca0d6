#!/bin/sh
# berth's uninstall.sh: removes what install.sh installed — stops and disables the
# units, takes this node's pods off the host (berth-agent --remove-all-pods, as
# `cargo xtask down` does), and removes the binaries, the units and /etc/berth. The
# cluster's data (/var/lib/berth: the store, certificates, images, volumes) stays
# unless --purge.
set -eu

usage() {
    cat <<'EOF'
Usage: uninstall.sh [--purge] [--prefix DIR] [--root DIR] [--no-stop]

  --purge        also remove /var/lib/berth (the store, certificates, images, pod
                 volumes), /run/berth, the pinned eBPF programs, the pod bridge and
                 berth's cgroups
  --prefix DIR   the prefix install.sh was given (default /usr/local)
  --root DIR     remove from DIR as if it were / (needs --no-stop)
  --no-stop      no systemctl, no pod removal: files only
EOF
}

die() {
    echo "uninstall.sh: $*" >&2
    exit 1
}

ROOT=
PREFIX=/usr/local
STOP=1
PURGE=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --purge) PURGE=1; shift ;;
        --prefix) [ "$#" -ge 2 ] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
        --root) [ "$#" -ge 2 ] || die "--root needs a value"; ROOT=${2%/}; shift 2 ;;
        --no-stop) STOP=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$ROOT" ]; then
    case "$ROOT" in /?*) ;; *) die "--root must be an absolute path below /" ;; esac
    [ "$STOP" = 0 ] || die "--root removes from another tree: give --no-stop too"
elif [ "$(id -u)" != 0 ]; then
    die "run it as root"
fi

BIN=$PREFIX/bin
UNITS="berth-agent.service berth-csi.service berth-server.service"

if [ "$STOP" = 1 ] && command -v systemctl >/dev/null 2>&1; then
    # The CSI driver stays up until the pods are gone: their volumes are unpublished
    # through it.
    for u in berth-agent.service berth-server.service; do
        systemctl disable --now "$u" >/dev/null 2>&1 || true
    done
    # The pods off the host through the agent's own teardown, with the flags its unit
    # ran it with (containers, network, volumes, cgroups).
    unit=/etc/systemd/system/berth-agent.service
    if [ -x "$BIN/berth-agent" ] && [ -f "$unit" ] && [ -f /var/lib/berth/agent/kubelet.kubeconfig ]; then
        line=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$unit" | sed -n 's/^ExecStart=//p')
        (
            [ ! -f /etc/berth/berth-agent.env ] || . /etc/berth/berth-agent.env
            eval "set -- $line"
            "$@" --remove-all-pods >/dev/null
        ) || echo "uninstall.sh: warning: removing the pods failed; see above" >&2
    fi
    systemctl disable --now berth-csi.service >/dev/null 2>&1 || true
fi

for f in "$BIN/berth-server" "$BIN/berth-agent" "$BIN/berth-runtime" "$BIN/berth-csi" \
    /opt/cni/bin/berth-cni; do
    rm -f "$ROOT$f"
done
rm -rf "$ROOT$PREFIX/lib/berth"
for u in $UNITS; do
    rm -f "$ROOT/etc/systemd/system/$u"
done
rm -f "$ROOT/etc/berth/berth-agent.env" "$ROOT/etc/berth/berth-server.env"
rmdir "$ROOT/etc/berth" 2>/dev/null || true
# The bootstrap credentials: a token is a secret, and a new install brings a new one.
rm -f "$ROOT/var/lib/berth/agent/bootstrap.kubeconfig"

if [ "$PURGE" = 1 ]; then
    if [ -z "$ROOT" ]; then
        # Mounts of pods and volumes first, deepest first.
        grep -E ' /(var/lib|run)/berth/' /proc/self/mountinfo 2>/dev/null | cut -d' ' -f5 \
            | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf /run/berth /sys/fs/bpf/berth
        ! command -v ip >/dev/null 2>&1 || ip link del berth0 2>/dev/null || true
        for h in /sys/fs/cgroup /sys/fs/cgroup/*; do
            [ -d "$h/berth" ] && find "$h/berth" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        done
    fi
    rm -rf "$ROOT/var/lib/berth"
fi
if [ "$STOP" = 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
fi
if [ "$PURGE" = 1 ]; then
    echo "berth is removed from ${ROOT:-this host}, its data too"
else
    echo "berth is removed from ${ROOT:-this host}; its data stays in ${ROOT}/var/lib/berth (--purge removes it)"
fi
