#!/bin/sh
# Takes an etcd snapshot from this control-plane node's etcd, reads it back with
# `etcdutl snapshot status`, keeps it off the node (the mounted volume and, optionally,
# an S3-compatible bucket), and prints a report line; a schedule of its own, beside the
# snapshot every upgrade run takes through the node step:
#   upchain-snapshot {"sizeBytes":N,"location":"...","status":{...etcdutl's JSON...}}
# The chart's example CronJob runs it; docs/gates.md#the-etcd-snapshot explains it.
#
# Environment:
#   ETCD_ENDPOINT    etcd's client URL (default https://127.0.0.1:2379, the stacked member)
#   ETCD_PKI         directory of kubeadm's etcd certificates (default /etc/kubernetes/pki/etcd;
#                    without ca.crt there, etcd is reached without TLS)
#   BACKUP_DIR       where snapshots are kept: a volume that is not on this node (default /backup)
#   LOCATION_PREFIX  how that volume is named in the report (default pvc:etcd-backups)
#   KEEP             snapshots kept in BACKUP_DIR (default 7)
#   S3_URL           optional bucket URL (https://host/bucket) to upload each snapshot to, with
#                    S3_REGION (default us-east-1), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
set -eu

ETCD_ENDPOINT=${ETCD_ENDPOINT:-https://127.0.0.1:2379}
ETCD_PKI=${ETCD_PKI:-/etc/kubernetes/pki/etcd}
BACKUP_DIR=${BACKUP_DIR:-/backup}
LOCATION_PREFIX=${LOCATION_PREFIX:-pvc:etcd-backups}
KEEP=${KEEP:-7}

fail() {
  echo "etcd-backup: $*" >&2
  exit 1
}

case $KEEP in '' | *[!0-9]* | 0) fail "KEEP must be a whole number of at least 1, not '$KEEP'" ;; esac
if [ ! -d "$BACKUP_DIR" ] || [ ! -w "$BACKUP_DIR" ]; then
  fail "BACKUP_DIR $BACKUP_DIR is not a writable directory; mount the backup volume there"
fi
command -v etcdctl >/dev/null 2>&1 || fail "etcdctl is not in this image; use an image with etcdctl (and etcdutl from etcd 3.5)"

set -- --endpoints="$ETCD_ENDPOINT"
if [ -f "$ETCD_PKI/ca.crt" ]; then
  set -- "$@" --cacert="$ETCD_PKI/ca.crt" --cert="$ETCD_PKI/healthcheck-client.crt" \
    --key="$ETCD_PKI/healthcheck-client.key"
fi

name="etcd-snapshot-$(date -u +%Y%m%dT%H%M%SZ).db"
partial="$BACKUP_DIR/.partial-$name"
trap 'rm -f "$partial"' EXIT
ETCDCTL_API=3 etcdctl "$@" snapshot save "$partial" >&2 || fail "etcdctl snapshot save failed"

# etcdutl reads snapshots from etcd 3.5 on; etcdctl did before.
if command -v etcdutl >/dev/null 2>&1; then
  status=$(etcdutl snapshot status "$partial" -w json) || fail "etcdutl cannot read the snapshot"
else
  status=$(ETCDCTL_API=3 etcdctl snapshot status "$partial" -w json) || fail "etcdctl cannot read the snapshot"
fi
size=$(wc -c <"$partial" | tr -d ' ')
mv "$partial" "$BACKUP_DIR/$name"
location="$LOCATION_PREFIX/$name"

if [ -n "${S3_URL:-}" ]; then
  if [ -z "${AWS_ACCESS_KEY_ID:-}" ] || [ -z "${AWS_SECRET_ACCESS_KEY:-}" ]; then
    fail "S3_URL is set but AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is not"
  fi
  command -v curl >/dev/null 2>&1 || fail "S3_URL is set but this image has no curl"
  curl --fail --silent --show-error --aws-sigv4 "aws:amz:${S3_REGION:-us-east-1}:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    --upload-file "$BACKUP_DIR/$name" "${S3_URL%/}/$name" >&2 \
    || fail "uploading the snapshot to ${S3_URL%/}/$name failed"
  location="${S3_URL%/}/$name"
fi

# The newest KEEP snapshots stay; names sort by time and hold no spaces.
kept=0
for old in $(cd "$BACKUP_DIR" && printf '%s\n' etcd-snapshot-*.db | sort -r); do
  kept=$((kept + 1))
  if [ "$kept" -gt "$KEEP" ]; then rm -f "${BACKUP_DIR:?}/$old"; fi
done

echo "etcd-backup: $size bytes saved to $location" >&2
printf 'upchain-snapshot {"sizeBytes":%s,"location":"%s","status":%s}\n' "$size" "$location" "$status"
