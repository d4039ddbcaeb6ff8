#!/bin/sh
# One-shot job of docker/compose.yaml: waits for the Temporal frontend, makes sure the namespace exists and
# registers vlmflow's search attributes (each argument NAME=Type, as in src/config/search-attributes.ts).
# Idempotent: attributes that exist are left alone, so it runs on every `compose up`.
#   TEMPORAL_ADDRESS=temporal-frontend:7233 TEMPORAL_NAMESPACE=default temporal-setup.sh VlmflowModel=Keyword ...
set -eu
: "${TEMPORAL_ADDRESS:?}" "${TEMPORAL_NAMESPACE:=default}"
t() { temporal "$@" --address "$TEMPORAL_ADDRESS"; }

tries=0
until t operator cluster health >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 90 ] || { echo "temporal-setup: no Temporal frontend at $TEMPORAL_ADDRESS after 3 minutes" >&2; exit 1; }
  sleep 2
done

# The namespace: made here on the first run (a new cluster has none), then seen by every service.
if ! t operator namespace describe --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
  t operator namespace create --namespace "$TEMPORAL_NAMESPACE" --retention 720h
fi
tries=0
until t operator namespace describe --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "temporal-setup: namespace $TEMPORAL_NAMESPACE does not exist" >&2; exit 1; }
  sleep 2
done

existing=$(t operator search-attribute list --namespace "$TEMPORAL_NAMESPACE")
for pair in "$@"; do
  name=${pair%%=*}
  type=${pair#*=}
  if printf '%s\n' "$existing" | grep -qw "$name"; then
    echo "temporal-setup: search attribute $name exists"
  else
    t operator search-attribute create --namespace "$TEMPORAL_NAMESPACE" --name "$name" --type "$type"
    echo "temporal-setup: registered search attribute $name ($type)"
  fi
done
