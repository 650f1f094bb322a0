#!/usr/bin/env bash
# `make demo`: a local Ray head node, the pipeline as a Ray job, the Serve application, and a
# few real HTTP requests. Idempotent: reuses a running head node; `make stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

# Keep every Ray port on loopback, and let the CLI clients use the cluster's token.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
export RAY_ADDRESS="http://127.0.0.1:8265"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

STORE="$REPO/artifacts"
mkdir -p "$STORE"
# Outside the repository: the working directory is packaged while this log grows.
JOB_LOG="$(mktemp)"
trap 'rm -f "$JOB_LOG"' EXIT
DATASET="$REPO/artifacts/datasets/lastfm-hetrec2k"

# Ray's CLI clients and the cluster authenticate with one token; a new machine has none yet. Ray's own
# command creates it (and leaves an existing one alone), where every client on this machine looks.
TOKEN_FILE="$HOME/.ray/auth_token"
if [[ -n "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ]]; then
  echo "== Ray's authentication token: the one \$RAY_AUTH_TOKEN or \$RAY_AUTH_TOKEN_PATH gives"
elif [[ -s "$TOKEN_FILE" ]]; then
  echo "== Ray's authentication token: $TOKEN_FILE"
else
  ray get-auth-token --generate >/dev/null
  echo "== Created Ray's authentication token in $TOKEN_FILE (print it with \`ray get-auth-token\`)"
fi

if RAY_ADDRESS= ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
  echo "== Ray head node already running"
else
  echo "== Starting a local Ray head node (dashboard on 127.0.0.1:8265)"
  # Started from the repository root: `serve deploy` imports serve_apps.app relative to it. In the
  # background: the composer's import and the API key need no cluster, and are done meanwhile.
  # Serve's HTTP goes through HAProxy to the ingress replica's own server (encore.core.runtime.use_haproxy_ingress).
  RAY_SERVE_ENABLE_HA_PROXY=1 ray start --head --node-ip-address=127.0.0.1 --port=6379 \
    --dashboard-host=127.0.0.1 --dashboard-port=8265 --disable-usage-stats >/dev/null &
  RAY_START_PID=$!
fi

# The composer ships trained (models/README.md says on what, how, and its figures): imported through the
# store's own API, every checksum verified, and promoted; a second run finds it there already.
# In the background too: the Composer replica picks the alias up whenever it appears.
COMPOSER_FOLDER="$(ls -d "$REPO"/models/composer-*/ | head -1)"
echo "== Importing the pretrained composer ${COMPOSER_FOLDER#"$REPO/"}"
python -m encore.store --uri "$STORE" import "$COMPOSER_FOLDER" --alias composer-latest --alias composer-production &
IMPORT_PID=$!

# The service asks every client for an API key. The demo's own, with every scope, is kept beside the
# store (readable by you only) so that a second run reuses it; the file of keys holds only their hashes.
KEYS_FILE="$STORE/api_keys.json"
DEMO_KEY_FILE="$STORE/demo_api_key"
if [[ ! -s "$DEMO_KEY_FILE" ]]; then
  (umask 077; python -m encore.serving.access --file "$KEYS_FILE" create --name demo \
    --scopes recommend,classify,compose,admin --rate 100/second >"$DEMO_KEY_FILE")
  echo "== Created the demo's API key in $DEMO_KEY_FILE (its hash in $KEYS_FILE)"
fi
export ENCORE_API_KEY="$(cat "$DEMO_KEY_FILE")"

if [[ -n "${RAY_START_PID:-}" ]]; then
  wait "$RAY_START_PID"
fi

# Deployed before the models exist: its replicas start while the pipeline trains, and each answers 503
# model_unavailable until its alias is published, then loads the version.
echo "== Deploying the Serve application (serve_apps/config.yaml)"
serve deploy serve_apps/config.yaml

echo "== Submitting the pipeline job (ingest -> train -> evaluate -> store -> promote; genre classifier from the GTZAN table;"
echo "   sound-alike index of the bundled instrument clips); a second run reuses what the first trained"
# Absolute paths: the job runs in an unpacked copy of this folder, the Serve app reads the same store. The
# recommender is the one validation chose in benchmarks/RESULTS.md, at the configuration recorded there.
FEATURES="$REPO/artifacts/features/instrument-clips"
ray job submit --working-dir . -- bash -c "\
  python -m jobs.pipeline --input '$REPO/data/lastfm-hetrec2k' --dataset '$DATASET' --store '$STORE' --genre \
    --model-config configs/hetrec-hybrid.json --reuse && \
  python -m jobs.extract_features --input '$REPO/data/instrument-clips' --output '$FEATURES' && \
  python -m jobs.index_tracks --features '$FEATURES' --store '$STORE' --alias soundalike-latest \
    --alias soundalike-production" \
  2>&1 | tee "$JOB_LOG"
JOB_ID="$(grep -oE "raysubmit_[A-Za-z0-9]+" "$JOB_LOG" | head -1)"

wait "$IMPORT_PID"

python scripts/demo_requests.py --url http://127.0.0.1:8000 --wait 180 --out "${TMPDIR:-/tmp}/encore-demo"

cat <<INFO

== Encore is running on a local Ray cluster
  Dashboard   http://127.0.0.1:8265   (asks for the token: print it with \`ray get-auth-token\`)
  Pipeline    http://127.0.0.1:8265/#/jobs/${JOB_ID}
  Web page    http://127.0.0.1:8000/   (give it the API key below)
  API docs    http://127.0.0.1:8000/docs   (OpenAPI: http://127.0.0.1:8000/openapi.json)
  API key     $ENCORE_API_KEY
              curl -H "X-API-Key: \$(cat $DEMO_KEY_FILE)" -H 'content-type: application/json' \\
                -d '{"user_id": "2", "n": 5}' http://127.0.0.1:8000/v1/recommend
  More keys   python -m encore.serving.access --file "$KEYS_FILE" create --name my-app --scopes recommend
  Models      python -m encore.store --uri "$STORE" list
  Stop        make stop
INFO
