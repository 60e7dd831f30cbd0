#!/usr/bin/env bash
# The node Job's command (docs/node-script.md). It checks every value before any reaches
# the node, copies the node script and the run's parameters (one quoted env file) to
# /var/lib/upchain/incoming on the node under a name of this Job's own, then runs the
# script there: `launch` starts the upgrade detached from this SSH session, or attaches to
# the one already running for this run, and exits with its result; `prepare` checks and
# changes nothing; `etcd-check` reads etcd through the node's member; `etcd-snapshot`
# saves, reads back and test-restores a snapshot there, then copies it to the
# installation's destination (mounted here) and reads its checksum back. What the
# operator judges goes to the termination message.
set -euo pipefail

fail() {
  echo "upchain: $*" >&2
  exit 2
}
valid() { [[ ${!1-} =~ $2 ]] || fail "$1 '${!1-}' is not valid: it must match $2"; }

valid MODE '^(upgrade|prepare|etcd-check|etcd-snapshot)$'
valid TARGET_VERSION '^[0-9]+\.[0-9]+\.[0-9]+$'
valid NODE_NAME '^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'
valid NODE_IP '^[0-9A-Fa-f.:]{2,45}$'
valid NODE_ROLE '^(control-plane|worker)$'
valid SSH_USER '^[a-z_][a-z0-9_-]{0,31}$'
valid SSH_PORT '^[0-9]{1,5}$'
valid HOST_KEY_POLICY '^(Strict|AcceptNew)$'

work=$(mktemp -d)
# The copy of the SSH key goes on every exit; a stop by signal exits through here too.
trap 'rm -rf -- "$work"' EXIT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 130' INT
params="$work/params.env"
for key in RUN_ID TARGET_VERSION UPGRADE_KIND NODE_NAME NODE_ROLE FIRST_CONTROL_PLANE REATTACH \
  REPOSITORY REPOSITORY_URL REPOSITORY_KEY_URL LOCK_TIMEOUT MIN_FREE_MIB KUBELET_TIMEOUT \
  KUBELET_SETTLE; do
  value=${!key-}
  [ -n "$value" ] || continue
  case $value in *"'"* | *$'\n'*) fail "$key must not contain quotes or line breaks" ;; esac
  printf "%s='%s'\n" "$key" "$value" >>"$params"
done

install -m 0600 "$UPCHAIN_SSH_KEY" "$work/id"
known_hosts="$work/known_hosts"
: >"$known_hosts"
if [ -s "$UPCHAIN_KNOWN_HOSTS" ]; then cp "$UPCHAIN_KNOWN_HOSTS" "$known_hosts"; fi
report=${UPCHAIN_REPORT:-/dev/termination-log}
# Keys are always checked. Under AcceptNew a node with no line yet (and no host CA) is
# asked for its keys, without a login, and the run stops until someone confirms them.
known() {
  ssh-keygen -F "$NODE_NAME" -f "$known_hosts" >/dev/null 2>&1 || grep -q '^@cert-authority' "$known_hosts"
}
if [ "$HOST_KEY_POLICY" = Strict ]; then
  [ -s "$known_hosts" ] ||
    fail "no known host keys: put the nodes' keys in the ConfigMap of spec.runner.knownHosts"
elif ! known; then
  keys=$(ssh-keyscan -T 20 -p "$SSH_PORT" "$NODE_IP" 2>/dev/null | awk -v name="$NODE_NAME" '$1 !~ /^#/ && NF >= 3 {print name, $2, $3}')
  [ -n "$keys" ] || { echo "upchain: $NODE_NAME ($NODE_IP:$SSH_PORT) showed no SSH host key" >&2; exit 255; }
  while IFS= read -r key; do echo "upchain-host-key $key"; done <<<"$keys" >"$report"
  echo "upchain: $NODE_NAME's SSH host key is not confirmed yet; nothing ran on the node. It showed:" >&2
  ssh-keygen -lf - <<<"$keys" >&2 || true
  echo "upchain: if these are $NODE_NAME's keys, add these lines to the known hosts (the ConfigMap of policy.runner.knownHosts) and the run goes on:" >&2
  echo "$keys" >&2
  exit 25
fi

# Known hosts name a node by its Kubernetes name, whatever address it is reached at.
ssh_node() {
  ssh -i "$work/id" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$known_hosts" -o GlobalKnownHostsFile=/dev/null \
    -o HostKeyAlias="$NODE_NAME" -o ConnectTimeout=30 -o ServerAliveInterval=30 \
    -o ServerAliveCountMax=6 -o LogLevel=ERROR "$SSH_USER@$NODE_IP" "$@"
}

sudo="sudo -n "
if [ "$SSH_USER" = root ]; then sudo=""; fi
dir=/var/lib/upchain
# Copied under this Job's own name: the script keeps or removes its copies (a launch that
# holds the node adopts them; anything else leaves nothing behind).
tag="$(date +%s)-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
copy_to_node() {
  ssh_node "${sudo}sh -c 'mkdir -p $dir/incoming && chmod 0700 $dir && cat >$dir/incoming/$1'" <"$2"
}

echo "upchain: $MODE $NODE_ROLE node $NODE_NAME ($NODE_IP) for $TARGET_VERSION"
copy_to_node "upgrade-node-$tag.sh" "$UPCHAIN_SCRIPT"
copy_to_node "params-$tag.env" "$params"
case $MODE in
  upgrade) command=launch ;;
  *) command=$MODE ;;
esac
on_node="${sudo}/bin/bash $dir/incoming/upgrade-node-$tag.sh $command $dir/incoming/params-$tag.env"
if [ "$MODE" = upgrade ] || [ "$MODE" = prepare ]; then
  ssh_node -n "$on_node"
  exit 0
fi
ssh_node -n "$on_node" | tee "$work/out"
if [ "$MODE" = etcd-check ]; then
  grep '^upchain-etcd ' "$work/out" | head -c 4000 >"$report"
  exit 0
fi

# etcd-snapshot: the file leaves the node for the destination, and is read back there.
fail_snapshot() {
  echo "upchain: $*" >&2
  exit 23
}
line() { sed -n "s/^$1 //p" "$work/out" | tail -n 1; }
read -r file size sha <<<"$(line upchain-snapshot-file)"
status=$(line upchain-snapshot-status)
restored=$(line upchain-snapshot-restored)
[[ ${file-} =~ ^/var/lib/upchain/snapshot/[A-Za-z0-9._-]+/etcd\.db$ ]] ||
  fail_snapshot "the node reported no snapshot file"
[[ $size =~ ^[0-9]+$ && $sha =~ ^[0-9a-f]{64}$ ]] || fail_snapshot "the node reported no size and checksum"
[[ $status =~ ^\{[^{}]*\}$ && $restored =~ ^\{[^{}]*\}$ ]] ||
  fail_snapshot "the node reported no readable snapshot status"
[ -d "${SNAPSHOT_DESTINATION-}" ] ||
  fail_snapshot "no snapshot destination is mounted at '${SNAPSHOT_DESTINATION-}': set policy.snapshot in the chart"
name="etcd-$NODE_NAME-$(date -u +%Y%m%dT%H%M%SZ).db"
target="$SNAPSHOT_DESTINATION/$name"
# Through a pipe: ssh does not report a failed write to its standard output, cat does.
if ! ssh_node -n "${sudo}cat $file" 2>"$work/copy.err" | cat >"$target.part" 2>>"$work/copy.err"; then
  rm -f "$target.part"
  fail_snapshot "the destination ${SNAPSHOT_LOCATION-} refused the snapshot: $(head -c 300 "$work/copy.err")"
fi
mv -f "$target.part" "$target" || fail_snapshot "the destination ${SNAPSHOT_LOCATION-} refused the snapshot"
sync "$target" 2>/dev/null || true
read_back=$(sha256sum "$target" | cut -d' ' -f1)
[ "$read_back" = "$sha" ] || {
  bytes=$(stat -c %s "$target")
  rm -f "$target"
  fail_snapshot "the copy at ${SNAPSHOT_LOCATION-}/$name reads back as sha256 $read_back ($bytes bytes), not $sha ($size bytes): it is not the snapshot, and was removed"
}
ssh_node -n "${sudo}rm -rf -- ${file%/etcd.db}" || echo "upchain: warning: the node's copy $file was not removed" >&2
printf 'upchain-snapshot {"sizeBytes":%s,"sha256":"%s","readBack":"%s","location":"%s","node":"%s","status":%s,"restored":%s}\n' \
  "$size" "$sha" "$read_back" "${SNAPSHOT_LOCATION-}/$name" "$NODE_NAME" "$status" "$restored" | tee "$report"
