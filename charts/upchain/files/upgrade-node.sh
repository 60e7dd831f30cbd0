#!/usr/bin/env bash
# upchain's default node-upgrade script. The node Job streams it over SSH and runs it as
# root on the node with TARGET_VERSION (1.35.2), UPGRADE_KIND (patch|minor), NODE_NAME,
# NODE_IP, NODE_ROLE (control-plane|worker) and FIRST_CONTROL_PLANE (true|false).
#
# It is safe to run again after a failure at any step: every step checks whether its work
# is already done. Any failing command stops it with a non-zero exit code, which fails
# the Job and shows in the K8sUpgrade's status.
set -euo pipefail

: "${TARGET_VERSION:?TARGET_VERSION is not set}"
: "${UPGRADE_KIND:?UPGRADE_KIND is not set}"
: "${NODE_NAME:?NODE_NAME is not set}"
: "${NODE_ROLE:?NODE_ROLE is not set}"
: "${FIRST_CONTROL_PLANE:=false}"
# Leave CoreDNS alone (image and Corefile) when kubeadm upgrades the control plane, for
# clusters whose CoreDNS is managed elsewhere.
: "${SKIP_COREDNS_PHASE:=false}"
# kubeadm keeps a backup of etcd and the manifests per upgrade; keep this many.
: "${KEEP_BACKUPS:=2}"
# Tests run the script against a directory instead of /.
ROOT="${UPCHAIN_ROOT:-}"

KEYRING="$ROOT/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
SOURCES="$ROOT/etc/apt/sources.list.d/kubernetes.list"
BACKUPS="$ROOT/etc/kubernetes/tmp"
MINOR="${TARGET_VERSION%.*}"

log() { echo "upchain[$NODE_NAME]: $*"; }

case "$TARGET_VERSION" in
  [0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "TARGET_VERSION must be MAJOR.MINOR.PATCH, not $TARGET_VERSION" >&2; exit 2 ;;
esac
case "$UPGRADE_KIND:$NODE_ROLE" in
  patch:control-plane | patch:worker | minor:control-plane | minor:worker) ;;
  *) echo "unknown UPGRADE_KIND $UPGRADE_KIND or NODE_ROLE $NODE_ROLE" >&2; exit 2 ;;
esac

# pkgs.k8s.io has one apt repository per minor: a minor upgrade switches to the target's.
switch_repository() {
  local line="deb [signed-by=$KEYRING] https://pkgs.k8s.io/core:/stable:/v$MINOR/deb/ /"
  if [ -f "$SOURCES" ] && grep -qxF "$line" "$SOURCES"; then
    log "apt repository already at v$MINOR"
    return
  fi
  log "switching the apt repository to v$MINOR"
  mkdir -p "$(dirname "$KEYRING")" "$(dirname "$SOURCES")"
  # Downloaded first: a failed download must not leave an empty keyring behind.
  curl -fsSL -o "$KEYRING.asc" "https://pkgs.k8s.io/core:/stable:/v$MINOR/deb/Release.key"
  gpg --dearmor --yes -o "$KEYRING" "$KEYRING.asc"
  rm -f "$KEYRING.asc"
  echo "$line" >"$SOURCES"
}

# Installs the packages at the target version and holds them there.
install_held() {
  local packages=() package
  for package in "$@"; do
    packages+=("$package=$TARGET_VERSION-*")
  done
  apt-mark unhold "$@"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-change-held-packages \
    -o Dpkg::Options::=--force-confold "${packages[@]}"
  apt-mark hold "$@"
}

upgrade_kubeadm_configuration() {
  if [ "$NODE_ROLE" = control-plane ] && [ "$FIRST_CONTROL_PLANE" = true ]; then
    local flags=(upgrade apply -y "v$TARGET_VERSION")
    if [ "$SKIP_COREDNS_PHASE" = true ]; then
      flags+=(--skip-phases=addon/coredns)
      # One flag whose value is a comma-separated list.
      flags+=("--ignore-preflight-errors=CoreDNSMigration,CoreDNSUnsupportedPlugins")
    fi
    log "kubeadm ${flags[*]}"
    kubeadm "${flags[@]}"
  else
    log "kubeadm upgrade node"
    kubeadm upgrade node
  fi
}

# kubeadm leaves /etc/kubernetes/tmp/kubeadm-backup-{etcd,manifests}-<date> behind on
# every upgrade; on small control-plane disks they add up.
reclaim_backups() {
  local kind
  [ -d "$BACKUPS" ] || return 0
  for kind in etcd manifests; do
    find "$BACKUPS" -maxdepth 1 -name "kubeadm-backup-$kind-*" -print | sort -r |
      tail -n "+$((KEEP_BACKUPS + 1))" | while read -r old; do
        log "removing old backup $old"
        rm -rf -- "$old"
      done
  done
}

log "upgrading $NODE_ROLE node to $TARGET_VERSION ($UPGRADE_KIND)"
if [ "$UPGRADE_KIND" = minor ]; then
  switch_repository
fi
apt-get update -q
install_held kubeadm
upgrade_kubeadm_configuration
install_held kubelet kubectl
systemctl daemon-reload
systemctl restart kubelet
reclaim_backups
log "done: kubelet restarted at $TARGET_VERSION"
