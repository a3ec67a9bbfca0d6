#!/bin/sh
# berth's install.sh: sets a node up from this unpacked release tarball — no Rust, no
# build. Installs berth-server, berth-agent, berth-runtime and berth-csi into
# <prefix>/bin, berth-cni into /opt/cni/bin, the eBPF object and the pause image into
# <prefix>/lib/berth, the systemd units into /etc/systemd/system and their per-host
# settings into /etc/berth; writes the agent's bootstrap kubeconfig from --server,
# --token and --ca-file, and starts the units. Running it again changes only what
# differs (and restarts only what changed). docs/install.md has the whole story.
set -eu

usage() {
    cat <<'EOF'
Usage: install.sh [options]

Join this host to a cluster as a node:
  install.sh --server https://SERVER:6443 --token ID.SECRET --ca-file ca.crt

Make this host the cluster's server (and a node of it):
  install.sh --control-plane

Options:
  --server URL             the apiserver the agent joins (https://…)
  --token ID.SECRET        a bootstrap token (`berth-server token create` on the server)
  --ca-file PATH           the cluster's CA certificate (<data-dir>/pki/ca.crt on the server)
  --control-plane          also install and start berth-server on this host; without
                           --server, its own agent joins it with a token it makes
  --no-agent               with --control-plane: no agent on this host
  --node-name NAME         the Node's name (default: this host's name, lower-case)
  --node-ip IP             the Node's InternalIP (default: the address that routes
                           to the apiserver)
  --pod-cidr CIDR          this node's pod range (default 10.244.0.0/24; give each
                           node its own)
  Settings not given keep the values of the last install (/etc/berth/*.env).
  --advertise-address IP   with --control-plane: the address clients reach the
                           server on (default: this host's first address)
  --prefix DIR             where binaries and data go (default /usr/local)
  --root DIR               install into DIR as if it were / (images, tests); needs
                           --no-start
  --no-start               install only: no systemctl
  -h, --help               this text
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=
PREFIX=/usr/local
START=1
CONTROL_PLANE=0
AGENT=1
SERVER_URL=
TOKEN=
CA_FILE=
NODE_NAME=
NODE_IP=
POD_CIDR=
ADVERTISE=

need_value() {
    [ "$#" -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --server) need_value "$@"; SERVER_URL=$2; shift 2 ;;
        --token) need_value "$@"; TOKEN=$2; shift 2 ;;
        --ca-file) need_value "$@"; CA_FILE=$2; shift 2 ;;
        --control-plane) CONTROL_PLANE=1; shift ;;
        --no-agent) AGENT=0; shift ;;
        --node-name) need_value "$@"; NODE_NAME=$2; shift 2 ;;
        --node-ip) need_value "$@"; NODE_IP=$2; shift 2 ;;
        --pod-cidr) need_value "$@"; POD_CIDR=$2; shift 2 ;;
        --advertise-address) need_value "$@"; ADVERTISE=$2; shift 2 ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --root) need_value "$@"; ROOT=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# --- what this host needs -------------------------------------------------------------

# Commands this script runs.
missing=
for c in cat chmod cmp cp cut dirname find grep id mkdir mktemp mv rm sed sha256sum sleep sort tr uname; do
    command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
[ -z "$missing" ] || die "missing commands this script needs:$missing (Debian: coreutils, grep, sed, diffutils)"

# Commands the node needs at run time.
missing=
if [ "$AGENT" = 1 ]; then
    # berth-cni masquerades pod traffic that leaves the cluster with iptables.
    command -v iptables >/dev/null 2>&1 || missing="$missing iptables (berth-cni masquerades pod traffic with it; Debian: apt-get install iptables);"
fi
if [ "$START" = 1 ]; then
    command -v systemctl >/dev/null 2>&1 || missing="$missing systemctl (the units need systemd; or give --no-start);"
fi
[ -z "$missing" ] || die "this host lacks what a berth node needs:${missing%;}"

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$ROOT" ]; then
    case "$ROOT" in /*) ;; *) die "--root must be an absolute path" ;; esac
    [ "$START" = 0 ] || die "--root installs into another tree: give --no-start too (systemctl acts on this host)"
    ROOT=${ROOT%/}
elif [ "$(id -u)" != 0 ]; then
    die "run it as root (it installs into $PREFIX, /opt/cni/bin and /etc)"
fi
if [ "$AGENT" = 0 ] && [ "$CONTROL_PLANE" = 0 ]; then
    die "--no-agent goes with --control-plane (otherwise there is nothing to install)"
fi

# The join flags go together, and must be what they say.
if [ -n "$SERVER_URL$TOKEN$CA_FILE" ]; then
    [ -n "$SERVER_URL" ] && [ -n "$TOKEN" ] && [ -n "$CA_FILE" ] \
        || die "--server, --token and --ca-file go together"
    case "$SERVER_URL" in https://?*) ;; *) die "--server $SERVER_URL: want https://HOST:PORT" ;; esac
    echo "$TOKEN" | grep -Eq '^[a-z0-9]{6}\.[a-z0-9]{16}$' \
        || die "--token: want a bootstrap token ID.SECRET ([a-z0-9]{6}.[a-z0-9]{16}), as \`berth-server token create\` prints"
    [ -r "$CA_FILE" ] || die "--ca-file $CA_FILE: cannot read it"
    grep -q 'BEGIN CERTIFICATE' "$CA_FILE" || die "--ca-file $CA_FILE: not a PEM certificate"
fi

# previous FILE VAR: VAR as the last install wrote it into /etc/berth/FILE.
previous() {
    [ -f "$ROOT/etc/berth/$1" ] || return 0
    ( . "$ROOT/etc/berth/$1" && eval "printf '%s' \"\${$2:-}\"" )
}
[ -n "$POD_CIDR" ] || POD_CIDR=$(previous berth-agent.env BERTH_POD_CIDR)
[ -n "$POD_CIDR" ] || POD_CIDR=10.244.0.0/24
[ -n "$NODE_NAME" ] || NODE_NAME=$(previous berth-agent.env BERTH_NODE_NAME)
[ -n "$NODE_NAME" ] || NODE_NAME=$(uname -n | tr '[:upper:]' '[:lower:]')
[ -n "$NODE_IP" ] || NODE_IP=$(previous berth-agent.env BERTH_AGENT_ARGS | sed -n 's/^--node-ip //p')
[ -n "$ADVERTISE" ] || ADVERTISE=$(previous berth-server.env BERTH_ADVERTISE_ADDRESS)

echo "$POD_CIDR" | grep -Eq '^[0-9a-fA-F.:]+/[0-9]+$' || die "--pod-cidr $POD_CIDR: want a CIDR such as 10.244.1.0/24"
echo "$NODE_NAME" | grep -Eq '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' \
    || die "--node-name $NODE_NAME: want a lower-case DNS name (RFC 1123), as a Node's name is"
for ip in "$NODE_IP" "$ADVERTISE"; do
    [ -z "$ip" ] || echo "$ip" | grep -Eq '^[0-9a-fA-F.:]+$' || die "$ip: not an IP address"
done

# Linux 6.6 with BTF for the eBPF dataplane: without it the agent runs pods but does
# not load-balance Services, so this is a warning, not a refusal.
kernel=$(uname -r)
major=$(echo "$kernel" | cut -d. -f1)
minor=$(echo "$kernel" | cut -d. -f2 | sed 's/[^0-9].*//')
if [ "$AGENT" = 1 ] && { [ "${major:-0}" -lt 6 ] || { [ "$major" -eq 6 ] && [ "${minor:-0}" -lt 6 ]; }; }; then
    echo "install.sh: warning: Linux $kernel is older than 6.6: Services will not be load-balanced on this node" >&2
fi

# The tarball must be whole.
( cd "$HERE" && sha256sum -c --quiet SHA256SUMS ) >/dev/null 2>&1 \
    || die "$HERE: files differ from SHA256SUMS (a damaged or partial tarball?)"

# --- installing ---------------------------------------------------------------------

BIN=$PREFIX/bin
LIB=$PREFIX/lib/berth
CONF=/etc/berth
DATA=/var/lib/berth
CHANGED_SERVER=0
CHANGED_NODE=0

# put SRC DEST MODE: installs SRC at $ROOT/DEST unless it is there already; says
# whether it changed anything (exit 0: changed).
put() {
    dest=$ROOT$2
    if [ -f "$dest" ] && cmp -s "$1" "$dest"; then
        chmod "$3" "$dest"
        return 1
    fi
    mkdir -p "$(dirname "$dest")"
    # A new file renamed over the old one: a running binary is not written into.
    cp "$1" "$dest.berth-new"
    chmod "$3" "$dest.berth-new"
    mv -f "$dest.berth-new" "$dest"
    echo "  installed $2"
    return 0
}

# write DEST MODE: installs stdin at $ROOT/DEST (as put).
write() {
    tmp=$(mktemp)
    cat >"$tmp"
    if put "$tmp" "$1" "$2"; then rc=0; else rc=1; fi
    rm -f "$tmp"
    return $rc
}

# The units, for another prefix than the one they were rendered for.
unit() {
    sed "s#/usr/local/#$PREFIX/#g" "$HERE/systemd/$1"
}

echo "installing berth from $HERE into ${ROOT:-/}"
for b in berth-agent berth-runtime berth-csi; do
    if put "$HERE/bin/$b" "$BIN/$b" 0755; then CHANGED_NODE=1; fi
done
if put "$HERE/bin/berth-cni" /opt/cni/bin/berth-cni 0755; then CHANGED_NODE=1; fi
if put "$HERE/bin/berth-server" "$BIN/berth-server" 0755; then CHANGED_SERVER=1; fi
if put "$HERE/lib/berth/berth-ebpf-programs" "$LIB/berth-ebpf-programs" 0644; then CHANGED_NODE=1; fi
for f in $(cd "$HERE/lib/berth/images" && find . -type f | sed 's#^\./##' | sort); do
    if put "$HERE/lib/berth/images/$f" "$LIB/images/$f" 0644; then CHANGED_NODE=1; fi
done
mkdir -p "$ROOT$CONF" "$ROOT$DATA"
chmod 0700 "$ROOT$DATA"

if [ "$CONTROL_PLANE" = 1 ]; then
    if [ -z "$ADVERTISE" ]; then
        ADVERTISE=$( (hostname -I 2>/dev/null || true) | cut -d' ' -f1)
        [ -n "$ADVERTISE" ] || ADVERTISE=127.0.0.1
    fi
    if unit berth-server.service | write /etc/systemd/system/berth-server.service 0644; then CHANGED_SERVER=1; fi
    if printf 'BERTH_ADVERTISE_ADDRESS="%s"\nBERTH_SERVER_ARGS=""\n' "$ADVERTISE" \
        | write "$CONF/berth-server.env" 0644; then CHANGED_SERVER=1; fi
fi

if [ "$AGENT" = 1 ]; then
    AGENT_ARGS=
    [ -z "$NODE_IP" ] || AGENT_ARGS="--node-ip $NODE_IP"
    for u in berth-agent.service berth-csi.service; do
        if unit "$u" | write "/etc/systemd/system/$u" 0644; then CHANGED_NODE=1; fi
    done
    if printf 'BERTH_NODE_NAME="%s"\nBERTH_POD_CIDR="%s"\nBERTH_AGENT_ARGS="%s"\n' \
        "$NODE_NAME" "$POD_CIDR" "$AGENT_ARGS" | write "$CONF/berth-agent.env" 0644; then
        CHANGED_NODE=1
    fi
fi

# bootstrap_kubeconfig URL TOKEN CA: the kubeconfig the agent joins with (TLS bootstrap:
# it requests its own certificate with the token and keeps it in kubelet.kubeconfig).
bootstrap_kubeconfig() {
    mkdir -p "$ROOT$DATA/agent"
    chmod 0700 "$ROOT$DATA/agent"
    if put "$3" "$DATA/agent/ca.crt" 0644; then CHANGED_NODE=1; fi
    if cat <<EOF | write "$DATA/agent/bootstrap.kubeconfig" 0600
apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    server: $1
    certificate-authority: $DATA/agent/ca.crt
users:
- name: bootstrap
  user:
    token: $2
contexts:
- name: bootstrap
  context: {cluster: berth, user: bootstrap}
current-context: bootstrap
EOF
    then CHANGED_NODE=1; fi
}

if [ "$AGENT" = 1 ] && [ -n "$TOKEN" ]; then
    bootstrap_kubeconfig "$SERVER_URL" "$TOKEN" "$CA_FILE"
fi

if [ "$START" = 0 ]; then
    echo "berth is in place in ${ROOT:-/} (--no-start: nothing started)"
    if [ "$AGENT" = 1 ] && [ -z "$TOKEN" ] && [ ! -f "$ROOT$DATA/agent/bootstrap.kubeconfig" ]; then
        echo "the agent has no bootstrap kubeconfig yet: run install.sh again with --server, --token and --ca-file"
    fi
    exit 0
fi

# --- starting -----------------------------------------------------------------------

systemctl daemon-reload
# start_unit NAME CHANGED: enabled and running, restarted if something it runs changed.
start_unit() {
    systemctl enable "$1" >/dev/null 2>&1 || die "systemctl enable $1 failed"
    if [ "$2" = 1 ]; then
        systemctl restart "$1" || die "$1 did not start: see journalctl -u $1"
    else
        systemctl start "$1" || die "$1 did not start: see journalctl -u $1"
    fi
    echo "  $1 running"
}

if [ "$CONTROL_PLANE" = 1 ]; then
    start_unit berth-server.service "$CHANGED_SERVER"
    if [ "$AGENT" = 1 ] && [ -z "$TOKEN" ] && [ ! -f "$DATA/agent/kubelet.kubeconfig" ]; then
        # This host's own agent joins its server with a token the server makes.
        echo "  waiting for berth-server to make a bootstrap token"
        tries=0
        until TOKEN=$("$BIN/berth-server" --data-dir "$DATA/server" token create --ttl 1h 2>/dev/null); do
            tries=$((tries + 1))
            [ "$tries" -lt 60 ] || die "berth-server did not answer within a minute: see journalctl -u berth-server"
            sleep 1
        done
        bootstrap_kubeconfig "https://$ADVERTISE:6443" "$TOKEN" "$DATA/server/pki/ca.crt"
    fi
fi

if [ "$AGENT" = 1 ]; then
    if [ ! -f "$DATA/agent/bootstrap.kubeconfig" ] && [ ! -f "$DATA/agent/kubelet.kubeconfig" ]; then
        die "the agent has no credentials: give --server, --token and --ca-file"
    fi
    start_unit berth-csi.service "$CHANGED_NODE"
    start_unit berth-agent.service "$CHANGED_NODE"
fi
echo "berth is installed; \`journalctl -u berth-agent -f\` follows the node joining"
