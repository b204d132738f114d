#!/bin/sh
# Writes this pod's Redis (`init.sh redis`) or Sentinel (`init.sh sentinel`)
# configuration into /data/conf from the templates in /config (the ConfigMap
# tessera-redis) and the passwords in the environment (the Secret
# tessera-redis), then exits. Runs as an init container of the Redis image.
#
# The primary is whatever the sentinels say it is now; only on the very first
# start, when no sentinel answers, is it redis-0. A data node that restarts
# after a failover therefore comes back as a replica of the new primary.
set -eu

role=$1
# The tests run it outside a pod, on directories of their own.
config=${CONFIG_DIR:-/config}
data=${DATA_DIR:-/data}
ns=$POD_NAMESPACE
self="$POD_NAME.$SERVICE.$ns.svc"

for var in TESSERA_PASSWORD REPLICA_PASSWORD SENTINEL_PASSWORD SENTINEL_PEER_PASSWORD OPS_PASSWORD; do
  eval "value=\${$var:-}"
  # Substituted into config files: letters and digits only (openssl rand -hex 32).
  case $value in
    '' | *[!A-Za-z0-9]*) echo "init.sh: $var must be set, letters and digits only" >&2; exit 1 ;;
  esac
done
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

# SENTINELS/SENTINEL_PORT: the tests point them at a loopback port.
sentinels=${SENTINELS:-"redis-sentinel-0.redis-sentinel.$ns.svc redis-sentinel-1.redis-sentinel.$ns.svc redis-sentinel-2.redis-sentinel.$ns.svc"}
primary=
for sentinel in $sentinels; do
  answer=$(REDISCLI_AUTH=$TESSERA_PASSWORD timeout 3 redis-cli --user tessera \
    -h "$sentinel" -p "${SENTINEL_PORT:-26379}" \
    sentinel get-master-addr-by-name tessera 2>/dev/null | head -n 1) || true
  case $answer in '' | *ERR* | *NOAUTH* | *WRONGPASS*) ;; *) primary=$answer; break ;; esac
done
[ -n "$primary" ] || primary="redis-0.redis.$ns.svc"

umask 077
mkdir -p "$data/conf"
fill() {
  sed -e "s/@@SELF@@/$self/g" \
    -e "s/@@PRIMARY@@/$primary/g" \
    -e "s/@@TESSERA_PASSWORD_SHA256@@/$(sha "$TESSERA_PASSWORD")/g" \
    -e "s/@@REPLICA_PASSWORD_SHA256@@/$(sha "$REPLICA_PASSWORD")/g" \
    -e "s/@@SENTINEL_PASSWORD_SHA256@@/$(sha "$SENTINEL_PASSWORD")/g" \
    -e "s/@@SENTINEL_PEER_PASSWORD_SHA256@@/$(sha "$SENTINEL_PEER_PASSWORD")/g" \
    -e "s/@@OPS_PASSWORD_SHA256@@/$(sha "$OPS_PASSWORD")/g" \
    -e "s/@@SENTINEL_PASSWORD@@/$SENTINEL_PASSWORD/g" \
    -e "s/@@SENTINEL_PEER_PASSWORD@@/$SENTINEL_PEER_PASSWORD/g" \
    "$1"
}

case $role in
  redis)
    fill "$config/users.acl" >"$data/conf/users.acl"
    {
      fill "$config/redis.conf"
      echo "replica-announce-ip $self"
      echo "masterauth $REPLICA_PASSWORD"
      if [ "$primary" != "$self" ]; then echo "replicaof $primary 6379"; fi
    } >"$data/conf/redis.conf"
    ;;
  sentinel)
    fill "$config/sentinel.conf" >"$data/conf/sentinel.conf"
    ;;
  *)
    echo "usage: init.sh redis|sentinel" >&2
    exit 2
    ;;
esac
echo "init.sh: $role $self, primary $primary"
