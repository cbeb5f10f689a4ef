#!/bin/sh
# Prepares MinIO for msgd, idempotently: the bucket, a policy that allows that bucket only
# (deploy/minio-msgd-policy.json), and a MinIO user for msgd with that policy. msgd then never
# holds MinIO's root credentials. Run it again to change msgd's secret; a repeated run changes
# nothing else. POSIX sh and `mc` (the MinIO client) only.
#
# On the VPS (deploy/README.md, "MinIO"):
#   MINIO_ROOT_USER=... MINIO_ROOT_PASSWORD=... S3_SECRET=... sh deploy/minio-setup.sh
# In deploy/compose.yaml: the one-shot `minio-setup` service runs it in the MinIO image.
#
#   MINIO_URL             MinIO's S3 API                     (default http://127.0.0.1:9000)
#   MINIO_ROOT_USER       MinIO's root user                  (required)
#   MINIO_ROOT_PASSWORD   its password                       (required)
#   S3_BUCKET             msgd's bucket, s3.bucket           (default msgd)
#   S3_USER               msgd's user, s3.access_key_id      (default msgd)
#   S3_SECRET             its secret, s3.secret_access_key   (required, 8-40 characters)
#   POLICY_FILE           the policy, naming bucket `msgd`   (default: beside this script)
set -eu

MINIO_URL="${MINIO_URL:-http://127.0.0.1:9000}"
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
: "${S3_SECRET:?set S3_SECRET (msgd s3.secret_access_key)}"
BUCKET="${S3_BUCKET:-msgd}"
USER_NAME="${S3_USER:-msgd}"
POLICY_FILE="${POLICY_FILE:-$(dirname "$0")/minio-msgd-policy.json}"
POLICY_NAME="msgd-$BUCKET"

# mc's config (and with it MinIO's root credentials) goes to a temporary directory, removed
# on exit, never to ~/.mc.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM
mc() { command mc --config-dir "$work/mc" --quiet "$@"; }

echo "minio-setup: waiting for $MINIO_URL"
tries=0
until mc alias set setup "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    mc alias set setup "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"   # shows the error
    exit 1
  fi
  sleep 2
done

mc mb --ignore-existing "setup/$BUCKET"
# The committed policy names bucket `msgd`; another bucket name is substituted (sed is needed
# only then: MinIO's image, where compose runs this, may have none).
policy="$POLICY_FILE"
if [ "$BUCKET" != msgd ]; then
  policy="$work/policy.json"
  sed "s#arn:aws:s3:::msgd\([\"/]\)#arn:aws:s3:::$BUCKET\1#g" "$POLICY_FILE" >"$policy"
fi
mc admin policy create setup "$POLICY_NAME" "$policy"
mc admin user add setup "$USER_NAME" "$S3_SECRET"
if ! out="$(mc admin policy attach setup "$POLICY_NAME" --user "$USER_NAME" 2>&1)"; then
  case "$out" in
    *"already in effect"*) ;;   # attached by an earlier run
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "minio-setup: bucket $BUCKET, user $USER_NAME with policy $POLICY_NAME"
