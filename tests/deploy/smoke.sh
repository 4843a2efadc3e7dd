#!/usr/bin/env bash
# Deploy smoke test: build the real image and run it with docker-compose, on loopback only.
#
#   tests/deploy/smoke.sh            (run from anywhere; .ci/run calls it when CI=true)
#
# Steps: docker.io, docker-compose and debootstrap installed if missing -> dockerd started
# if no daemon answers (vfs storage, no bridge, no iptables) -> Debian base image (cached by
# tag) -> wheels from pyproject's pins -> `docker build --network host` of the runtime image
# (the export of models/weights/*.pt runs inside the build) -> compose stack with the
# host-network override -> /readyz -> a real face photo to /detect-faces and ten CIFAR-10
# photos to /classify -> non-root, no torch, no compiler, read-only root -> SIGTERM while a
# request is in flight: the request is answered and the container exits 0 -> teardown of
# everything it started (containers, volume, and dockerd itself if it started it).
#
# Exit status: 0 passed, 1 failed, 77 skipped (this machine cannot run Docker at all).
# Environment: POLYNL_SMOKE_PORT (default 18000), POLYNL_SMOKE_KEEP_DAEMON=1 leaves a daemon
# it started running (for repeated local runs).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
WORK="${TMPDIR:-/tmp}/polynl-smoke"
mkdir -p "$WORK"
PROJECT=polynl-smoke
BASE_TAG=local/debian-py:bookworm
IMAGE=polynl-serve:latest
EXPORT_IMAGE=polynl-serve:export
DOCKERD_PID="/run/polynl-smoke-dockerd.pid"
SAMPLES="$ROOT/samples"
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml -f docker-compose.hostnet.yml)
STARTED=$SECONDS
STARTED_DOCKERD=0
STACK_UP=0

say() { printf '[smoke %4ds] %s\n' "$((SECONDS - STARTED))" "$*"; }
fail() { say "FAILED: $*"; exit 1; }
skip() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
  printf '!!! DEPLOY SMOKE TEST SKIPPED: %s\n' "$*"
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
  exit 77
}

remove_lb() {  # the replicas and nginx of the scale-out check (started with docker run)
  local ids
  ids="$(docker ps -aq --filter label=polynl-smoke=1 2>/dev/null)"
  [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1
}

cleanup() {
  local status=$?
  set +e
  remove_lb
  if [[ $STACK_UP == 1 ]]; then
    if [[ $status != 0 ]]; then
      say "container logs (last 40 lines):"
      "${COMPOSE[@]}" logs --no-color --tail 40 api 2>/dev/null | sed 's/^/    /'
    fi
    say "tearing down the compose stack"
    "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 30 >"$WORK/down.log" 2>&1
  fi
  if [[ $STARTED_DOCKERD == 1 && ${POLYNL_SMOKE_KEEP_DAEMON:-0} != 1 ]]; then
    say "stopping the dockerd this test started"
    stop_dockerd
  fi
  say "total $((SECONDS - STARTED)) s, exit $status"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ------------------------------------------------------------------------------
need_install=()
command -v dockerd >/dev/null || need_install+=(docker.io)
command -v docker-compose >/dev/null || need_install+=(docker-compose)
command -v debootstrap >/dev/null || need_install+=(debootstrap)
if ((${#need_install[@]})); then
  [[ $(id -u) == 0 ]] || skip "missing ${need_install[*]} and not root to install them"
  say "installing ${need_install[*]} from Debian's packages"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}"; } \
    >"$WORK/apt.log" 2>&1 || skip "apt-get install ${need_install[*]} failed (see $WORK/apt.log)"
fi

# --- daemon -----------------------------------------------------------------------------
stop_dockerd() {
  local pid
  pid="$(cat "$DOCKERD_PID" 2>/dev/null)" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  say "dockerd $pid did not stop in 30 s; killing it"
  kill -KILL "$pid" 2>/dev/null
}

if docker info >/dev/null 2>&1; then
  say "using the running Docker daemon"
else
  [[ $(id -u) == 0 ]] || skip "no Docker daemon answers and not root to start one"
  say "starting dockerd (vfs storage, no bridge, no iptables)"
  dockerd --storage-driver=vfs --bridge=none --iptables=false -p "$DOCKERD_PID" \
    >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=1
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || {
    tail -5 "$WORK/dockerd.log"
    skip "dockerd does not start on this machine (see $WORK/dockerd.log)"
  }
fi
say "Docker $(docker version -f '{{.Server.Version}}'), $(docker-compose version --short 2>/dev/null | head -1) (compose)"

# --- inputs -----------------------------------------------------------------------------
for weights in models/weights/classifier.pt models/weights/face_detector.pt; do
  [[ -f $weights ]] || fail "$weights is missing: the image exports the shipped weights at build time"
done
[[ -f $SAMPLES/face_astronaut.jpg ]] || fail "$SAMPLES/face_astronaut.jpg is missing"

PORT="${POLYNL_SMOKE_PORT:-18000}"
python3 -c "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', $PORT))" 2>/dev/null \
  || fail "port $PORT on 127.0.0.1 is taken; set POLYNL_SMOKE_PORT"

# --- images -----------------------------------------------------------------------------
deploy/build-base.sh "$BASE_TAG"
say "wheels for the offline image build"
deploy/fetch-wheels.sh >"$WORK/wheels.log" 2>&1 || { cat "$WORK/wheels.log"; fail "deploy/fetch-wheels.sh"; }

say "building $IMAGE (target runtime; the export runs inside the build)"
build_start=$SECONDS
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, works with dockerd 20.10
build() {  # build <target> <tag>
  nice -n 10 docker build --network host --build-arg "BASE_IMAGE=$BASE_TAG" \
    --target "$1" -t "$2" . >>"$WORK/build.log" 2>&1 || {
    tail -40 "$WORK/build.log"
    fail "docker build --target $1"
  }
}
: >"$WORK/build.log"
build runtime "$IMAGE"
BUILD_S=$((SECONDS - build_start))
size_mb="$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')"
cached=$(grep -c "Using cache" "$WORK/build.log" || true)
say "build: ${BUILD_S} s ($cached cached steps); image $IMAGE: ${size_mb} MB"

# --- run --------------------------------------------------------------------------------
export POLYNL_IMAGE="$IMAGE" POLYNL_EXPORT_IMAGE="$EXPORT_IMAGE" POLYNL_PORT="$PORT"
# A slow model for the SIGTERM drill below: each inference call takes 3 s longer, so a request
# is still in flight when docker-compose (about 1 s to start) delivers SIGTERM. The deadline
# is raised to match (uvicorn's graceful timeout follows it: 30 + 5 s).
export POLYNL_INFERENCE_DELAY_MS=3000 POLYNL_REQUEST_TIMEOUT_S=30
"${COMPOSE[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true  # leftovers of a killed run
say "docker-compose up (host network, 127.0.0.1:$PORT)"
up_start=$SECONDS
STACK_UP=1
"${COMPOSE[@]}" up -d --no-build api >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "docker-compose up"; }
CID="$("${COMPOSE[@]}" ps -q api)"
[[ -n $CID ]] || fail "no api container"
ready_s="$(python3 tests/deploy/smoke_client.py wait-ready "$PORT" 240)" || fail "not ready: $ready_s"
say "/readyz 200 after ${ready_s} s (container start to ready: $((SECONDS - up_start)) s)"
for _ in $(seq 40); do
  health="$(docker inspect -f '{{.State.Health.Status}}' "$CID")"
  [[ $health == healthy ]] && break
  sleep 1
done
[[ $health == healthy ]] || fail "Docker health status is '$health', not healthy"
say "Docker HEALTHCHECK: healthy"

say "requests with real images"
python3 tests/deploy/smoke_client.py check "$PORT" "$SAMPLES" || fail "HTTP checks"

say "container hygiene"
uid="$(docker exec "$CID" id -u)"
[[ $uid != 0 ]] || fail "the service runs as root"
say "  runs as uid $uid ($(docker exec "$CID" id -un))"
if docker exec "$CID" python -c "import torch" >/dev/null 2>&1; then fail "torch is importable in the runtime image"; fi
say "  import torch fails in the runtime image (as it should)"
compilers="$(docker exec "$CID" sh -c 'for c in gcc cc g++ clang; do command -v $c; done' || true)"
[[ -z $compilers ]] || fail "compilers in the runtime image: $compilers"
say "  no compiler in the runtime image"
if docker exec "$CID" sh -c 'touch /app/probe' 2>/dev/null; then fail "the root file system is writable"; fi
docker exec "$CID" sh -c 'touch /tmp/probe && rm /tmp/probe' || fail "/tmp is not writable"
say "  root file system read-only, /tmp writable"
pid1="$(docker exec "$CID" cat /proc/1/cmdline | tr '\0' ' ')"
say "  PID 1: $pid1"

# --- scale-out: two replicas behind nginx with deploy/nginx/nginx.conf --------------------
# docker-compose.scale.yml needs compose's DNS (a bridge network); on a host network the same
# nginx.conf gets loopback upstreams instead. nginx cannot be pulled here: a local image.
lb_check() {
  local nginx_image=local/debian-nginx:bookworm p1=$((PORT + 1)) p2=$((PORT + 2)) plb=$((PORT + 3)) p
  # On the host network every replica needs its own ports: HTTP, and gRPC (the compose
  # service already holds POLYNL_GRPC_PORT's default, 8001).
  for p in $p1 $p2 $plb $((p1 + 1000)) $((p2 + 1000)); do
    python3 -c "import socket; socket.socket().bind(('127.0.0.1', $p))" 2>/dev/null || fail "port $p is taken"
  done
  deploy/build-base.sh "$nginx_image" nginx-light
  sed -e "s|server api:8000 \(.*\);|server 127.0.0.1:$p1 \1;\n        server 127.0.0.1:$p2 \1;|" \
    -e "s|listen 8080;|listen 127.0.0.1:$plb;|" deploy/nginx/nginx.conf >"$WORK/nginx.conf"
  # The second replica runs two worker processes (POLYNL_WORKERS=2: SO_REUSEPORT, metrics
  # files in the /tmp tmpfs of the read-only container).
  local workers
  for p in $p1 $p2; do
    workers=$([[ $p == "$p2" ]] && echo 2 || echo 1)
    docker run -d --label polynl-smoke=1 --network host --read-only --tmpfs /tmp \
      -e POLYNL_HOST=127.0.0.1 -e POLYNL_PORT="$p" -e POLYNL_GRPC_PORT="$((p + 1000))" -e POLYNL_INTRA_OP_THREADS=1 \
      -e POLYNL_WORKERS="$workers" "$IMAGE" >/dev/null
  done
  docker run -d --label polynl-smoke=1 --network host --read-only --tmpfs /tmp \
    -v "$WORK/nginx.conf:/etc/nginx/nginx.conf:ro" "$nginx_image" nginx -g "daemon off;" >/dev/null
  for p in $p1 $p2; do
    python3 tests/deploy/smoke_client.py wait-ready "$p" 240 >/dev/null || fail "replica on $p not ready"
  done
  python3 tests/deploy/smoke_client.py balanced "$plb" "$SAMPLES" "$p1" "$p2" || fail "load balancing"
  remove_lb
}
say "scale-out: 2 replicas behind nginx (the second with POLYNL_WORKERS=2)"
lb_check

say "SIGTERM with a request in flight (docker-compose stop)"
python3 tests/deploy/smoke_client.py in-flight "$PORT" "$SAMPLES/cifar_ship.png" "$WORK/in-flight.json" &
client=$!
sleep 0.5
stop_start=$SECONDS
"${COMPOSE[@]}" stop --timeout 45 api >"$WORK/stop.log" 2>&1 || { cat "$WORK/stop.log"; fail "docker-compose stop"; }
wait "$client" || true
exit_code="$(docker inspect -f '{{.State.ExitCode}}' "$CID")"
say "  stopped in $((SECONDS - stop_start)) s, exit code $exit_code; in-flight request: $(cat "$WORK/in-flight.json")"
[[ $exit_code == 0 ]] || fail "the container exited with $exit_code after SIGTERM (want 0: a clean stop)"
python3 -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r['status'] != 200)" \
  "$WORK/in-flight.json" || fail "the request in flight during SIGTERM was not answered with 200"
docker logs "$CID" 2>&1 | grep -q "Finished server process" || fail "uvicorn did not log a clean shutdown"

say "PASSED: image ${size_mb} MB, build ${BUILD_S} s, ready ${ready_s} s"
