#!/usr/bin/env bash
# Serve the models: set up .venv, build model_repository/ from the shipped default weights
# if it is missing, then start the API (default http://127.0.0.1:8000, docs at /docs).
# Settings come from POLYNL_* environment variables (see README).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup.sh"
REPO="${POLYNL_MODEL_REPOSITORY:-model_repository}"
if [ ! -f "$REPO/classifier/1/config.json" ] || [ ! -f "$REPO/face_detector/1/config.json" ]; then
  echo "==> building the model repository $REPO from models/weights/ (about a minute)"
  .venv/bin/python -m export --all --out "$REPO"
fi
HOST="${POLYNL_HOST:-127.0.0.1}"
PORT="${POLYNL_PORT:-8000}"
echo "==> serving on http://$HOST:$PORT  (API docs: http://$HOST:$PORT/docs)"
export POLYNL_MODEL_REPOSITORY="$REPO" POLYNL_HOST="$HOST" POLYNL_PORT="$PORT"
POLYNL_LOG_LEVEL="$(echo "${POLYNL_LOG_LEVEL:-info}" | tr '[:upper:]' '[:lower:]')"
export POLYNL_LOG_LEVEL
# python -m service: POLYNL_WORKERS server processes, a clean exit (0) after SIGTERM.
exec .venv/bin/python -m service
