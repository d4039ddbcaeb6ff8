#!/bin/sh
# One-shot job of docker/compose.yaml: creates Temporal's two databases on PostgreSQL, or migrates them to this
# release's schema, with Temporal's SQL tool: the steps src/stack/temporal-cluster.ts runs for the cluster tests
# (test/docker.test.ts runs this script against a real PostgreSQL with the same tool). Idempotent: a database that
# is already set up is only migrated.
#   POSTGRES_SEEDS=postgresql DB_PORT=5432 POSTGRES_USER=temporal POSTGRES_PWD=... temporal-schema.sh
set -eu
: "${POSTGRES_SEEDS:?}" "${DB_PORT:=5432}" "${POSTGRES_USER:?}" "${POSTGRES_PWD:?}"
: "${SCHEMA_DIR:=/etc/temporal/schema/postgresql/v12}"
tool() {
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" --pw "$POSTGRES_PWD" "$@"
}

for pair in temporal:temporal temporal_visibility:visibility; do
  db=${pair%%:*}
  schema="$SCHEMA_DIR/${pair#*:}/versioned"
  if tool --db "$db" update-schema -d "$schema" >/dev/null 2>&1; then
    echo "temporal-schema: $db is at this release's schema"
    continue
  fi
  tool --db "$db" create-database
  tool --db "$db" setup-schema -v 0.0
  tool --db "$db" update-schema -d "$schema"
  echo "temporal-schema: created $db"
done
