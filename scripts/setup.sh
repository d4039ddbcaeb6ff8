#!/usr/bin/env bash
# Installs what is missing and skips what is present: Node deps, the Temporal CLI, the Python venv,
# generated code and the tiny fixture model. Both README commands run it first.
#   npm run setup
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
say() { printf '[setup] %s\n' "$*"; }
started=$SECONDS

# 1. Node dependencies, exactly as locked.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing Node dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# 2. The Temporal CLI (dev server + Web UI), built from the Go module proxy into .tools/bin.
#    v1.5.1 is the last tag whose go.mod has no `replace` directive, so `go install` works.
if [ ! -x .tools/bin/temporal ]; then
  say "building the Temporal CLI v1.5.1 (go install, a few minutes the first time)"
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod go install github.com/temporalio/cli/cmd/temporal@v1.5.1
fi

# 2b. The Temporal server and its SQL schema tool (v1.29.1, no `replace` directives), with the release's SQL schema,
#     and PostgreSQL: the multi-service cluster the cluster tests run (src/stack/temporal-cluster.ts).
server_tools=.tools/temporal-server
if [ ! -x "$server_tools/bin/server" ] || [ ! -x "$server_tools/bin/sql" ] || [ ! -d "$server_tools/schema/postgresql" ]; then
  say "building the Temporal server and its SQL tool v1.29.1 (go install, several minutes the first time)"
  GOBIN="$root/$server_tools/bin" GOFLAGS=-mod=mod go install \
    go.temporal.io/server/cmd/server@v1.29.1 go.temporal.io/server/cmd/tools/sql@v1.29.1
  module="$(go env GOMODCACHE)/go.temporal.io/server@v1.29.1"
  rm -rf "$server_tools/schema" && mkdir -p "$server_tools/schema"
  cp -r "$module/schema/postgresql" "$server_tools/schema/" && chmod -R u+w "$server_tools/schema"
fi
apt_install() {
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null; fi
}
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [ -z "${VLMFLOW_POSTGRES_BIN:-}" ]; then
  say "installing PostgreSQL (Debian's postgresql package)"
  apt_install postgresql
fi

# 2c. Chromium (Debian's package), the headless browser of the Temporal UI test (test/temporal-ui.test.ts).
if [ ! -x /usr/bin/chromium ] && [ -z "${VLMFLOW_CHROMIUM:-}" ]; then
  say "installing Chromium (Debian's chromium package)"
  apt_install chromium
fi

# 3. The Python venvs, each exactly its lock: the worker's (python-worker/.venv, requirements.lock) and the MLflow
#    tracking server's that tests/test_tracking_mlflow.py starts (.tools/mlflow-server, mlflow-server.lock; apart so
#    the worker's venv holds what a deployed worker does). Wheels are kept in a wheelhouse outside the clone so a fresh
#    clone installs offline; uv installs them (42 s for the worker's venv here, pip took 157 s) and `uv pip sync`
#    also removes what a lock no longer lists.
wheels="${VLMFLOW_WHEELHOUSE:-$HOME/.cache/vlmflow/wheels}"
python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
mkdir -p "$wheels"
uv_version=0.13.9
uv=.tools/uv/bin/uv
if [ "$("$uv" --version 2>/dev/null | cut -d" " -f2)" != "$uv_version" ]; then
  say "installing uv $uv_version into .tools/uv"
  "$python" -m pip download -q --no-deps -d "$wheels" "uv==$uv_version" 2>/dev/null || true  # offline: the wheelhouse's
  "$python" -m pip install -q --root-user-action=ignore --no-index --find-links "$wheels" --upgrade --target .tools/uv "uv==$uv_version"
fi
sync_venv() {  # sync_venv <venv> <lock>: creates the venv if missing and makes it hold exactly the lock's packages
  local venv="$1" lock="$2"
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$python" -m venv "$venv"; }
  local sync=("$uv" pip sync -q --python "$venv/bin/python" --compile-bytecode --find-links "$wheels")
  if ! "${sync[@]}" --offline --no-index "$lock" 2>/dev/null; then
    say "downloading Python wheels into $wheels (torch is large; once per machine)"
    # `pip wheel`, not `download`: a package published only as an sdist (docopt, under num2words) is built into a
    # wheel here, where the index can supply its build tools; the offline install could not build it.
    "$venv/bin/pip" wheel -q -w "$wheels" --find-links "$wheels" -r "$lock"
    "${sync[@]}" --offline --no-index "$lock"
  fi
}
venv=python-worker/.venv
want="$(cat python-worker/pyproject.toml python-worker/requirements.lock | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$venv/.vlmflow-stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$venv/bin/python" ]; then
  say "installing the worker's venv ($venv)"
  sync_venv "$venv" python-worker/requirements.lock
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e python-worker
  echo "$want" > "$venv/.vlmflow-stamp"
fi
mlflow_venv=.tools/mlflow-server
want="$(sha256sum python-worker/mlflow-server.lock | cut -d' ' -f1)"
if [ "$(cat "$mlflow_venv/.vlmflow-stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$mlflow_venv/bin/mlflow" ]; then
  say "installing the MLflow tracking server's venv ($mlflow_venv)"
  sync_venv "$mlflow_venv" python-worker/mlflow-server.lock
  echo "$want" > "$mlflow_venv/.vlmflow-stamp"
fi

# 4. Generated code (committed; rebuilt only when missing).
if [ ! -f src/gen/vlmflow/v1/worker.ts ] || [ ! -f python-worker/gen/vlmflow/v1/worker_pb2.py ]; then
  say "generating gRPC code"
  bash scripts/gen.sh
fi

# 5. The tiny random-weight Idefics3 model used by tests and the offline demo (seconds, offline). The builder
#    module decides (`is_complete`): a folder stamped with its own fingerprint (its source and library versions) is
#    kept, anything else rebuilt, so a changed builder reaches this checkout here, not only at the next test run.
tiny="${VLMFLOW_TINY_MODEL:-$root/.state/models/tiny-idefics3}"
tiny_current='import sys; from pathlib import Path; from vlmflow_worker.fixtures.tiny_model import is_complete as c
sys.exit(0 if c(Path(sys.argv[1])) else 3)'
tiny_rc=0; "$venv/bin/python" -c "$tiny_current" "$tiny" 2>/dev/null || tiny_rc=$?
if [ "$tiny_rc" -eq 3 ]; then  # 3: missing or stale; any other failure: the fixture module cannot be imported
  say "building the tiny fixture model at $tiny"
  "$venv/bin/python" -m vlmflow_worker.fixtures.tiny_model --out "$tiny" >/dev/null
fi

say "ready ($((SECONDS - started)) s)"
