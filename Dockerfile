# polynl-serve images: the export step (torch CPU) and the serving runtime (ONNX Runtime).
#
#   deploy/fetch-wheels.sh                        # once: wheels from pyproject's pins -> build/wheels
#   docker build --target runtime -t polynl-serve:latest .
#   docker build --target export  -t polynl-serve:export .
#
# Stages (each builds only on what it needs):
#   python-base   BASE_IMAGE + Python environment variables
#   serve-deps    /opt/venv with the service's dependencies (onnxruntime-gpu, FastAPI, ...)
#   export        serve-deps + torch CPU + models/ export/ code and shipped weights;
#                 its command writes a model repository: `docker run ... -v repo:/models`
#   model-repo    runs the export once at build time on models/weights/*.pt -> /models
#   runtime       python-base + /opt/venv from serve-deps + polynl_core/ + service/ + /models.
#                 No torch, no compilers, no pip cache, no wheels; non-root; read-only friendly.
#
# Everything installs from build/wheels with --no-index, so the build needs no network. The
# CUDA and cuDNN libraries for ONNX Runtime's CUDA execution provider come from NVIDIA's pip
# wheels (the onnxruntime-gpu [cuda,cudnn] extras) when built with --build-arg ORT_CUDA=1;
# without them (the default) the CUDA provider cannot load and the service runs on CPU.
# See deploy/README-deploy.md.

# Default: the official slim Python image. Where no registry is reachable, build a local
# base with deploy/build-base.sh and pass --build-arg BASE_IMAGE=local/debian-py:bookworm.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# --- serving dependencies ----------------------------------------------------------------
FROM python-base AS serve-deps
# 1 = also install NVIDIA's CUDA 13 / cuDNN 9 wheels (build/wheels/cuda, fetched with
# `deploy/fetch-wheels.sh --cuda`) so the CUDA execution provider loads on a GPU host.
ARG ORT_CUDA=0
COPY build/wheels/serve /wheels/serve
COPY build/wheels/cuda /wheels/cuda
# One layer: venv, install, prune. The pruned files are never used at run time: pip and
# setuptools (the runtime installs nothing), test folders, and the TensorRT provider (the
# service does not configure it).
RUN set -eu; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-index --find-links /wheels/serve -r /wheels/serve/requirements.txt; \
    if [ "$ORT_CUDA" = "1" ]; then \
      /opt/venv/bin/pip install --no-index --find-links /wheels/serve --find-links /wheels/cuda \
        -r /wheels/cuda/requirements.txt; \
    fi; \
    rm -rf /wheels; \
    /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -f "$site"/onnxruntime/capi/libonnxruntime_providers_tensorrt.so; \
    find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +; \
    /opt/venv/bin/python -m compileall -q -j 0 "$site" >/dev/null || true

# --- export: torch CPU + the model code; writes a model repository -----------------------
# The sources are gathered in a scratch stage first so each image below gets them in one
# layer (with the vfs storage driver every layer is a full copy of the file system).
FROM scratch AS export-src
COPY pyproject.toml /app/
COPY models /app/models
COPY export /app/export
COPY polynl_core /app/polynl_core
# Real photos for the export's ONNX-vs-PyTorch parity check.
COPY samples /app/samples

FROM serve-deps AS export
# Metadata first: the classic builder commits a full file-system copy per instruction under
# the vfs storage driver, so instructions are cheapest before the 2 GB torch layer.
WORKDIR /app
# Default: the shipped weights (models/weights/*.pt) -> /models. In compose, mount your own
# checkpoints on /app/models/weights and a volume on /models (the `export` service).
ENTRYPOINT ["python", "-m", "export"]
CMD ["--all", "--out", "/models"]
# build/wheels/export holds only what serve-deps lacks (torch CPU, onnx, onnxscript, ...).
COPY build/wheels/export /wheels/export
# serve-deps removed pip from the venv; ensurepip puts it back from Python's bundled wheel.
RUN /opt/venv/bin/python -m ensurepip --default-pip >/dev/null \
    && /opt/venv/bin/pip install --no-index --find-links /wheels/export -r /wheels/export/requirements.txt \
    && rm -rf /wheels
COPY --from=export-src /app /app

# --- the default model repository, exported once at build time ---------------------------
FROM export AS model-repo
RUN python -m export --all --out /models

# --- runtime: the serving image ------------------------------------------------------------
FROM scratch AS runtime-files
COPY polynl_core /app/polynl_core
COPY service /app/service
COPY --from=model-repo /models /models

FROM python-base AS runtime
ARG APP_UID=10001
# A fixed numeric uid so volume permissions are predictable; HOME in /tmp (the one writable place).
RUN groupadd --system --gid "$APP_UID" polynl \
    && useradd --system --uid "$APP_UID" --gid polynl --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin polynl
# Metadata before the big COPYs (cheap under vfs, see above). USER does not change who owns
# copied files (root): the code and the models are read-only to the service.
WORKDIR /app
ENV HOME=/tmp \
    POLYNL_MODEL_REPOSITORY=/models \
    POLYNL_HOST=0.0.0.0 \
    POLYNL_PORT=8000 \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib
USER polynl:polynl
# 8001: the Open Inference Protocol over gRPC (POLYNL_GRPC_PORT).
EXPOSE 8000 8001
# /readyz answers 200 only when every model is loaded and warmed up; urllib raises on >= 400.
HEALTHCHECK --interval=10s --timeout=4s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('POLYNL_PORT', '8000'), timeout=3)"]
# Exec form: python is PID 1 and gets SIGTERM itself. `python -m service` runs uvicorn on
# POLYNL_HOST:POLYNL_PORT; on SIGTERM uvicorn stops accepting, lets accepted requests finish
# (up to POLYNL_REQUEST_TIMEOUT_S + 5 s), then the app's shutdown drains the batchers.
CMD ["python", "-m", "service"]
COPY --from=serve-deps /opt/venv /opt/venv
# Two COPYs, not `/ /`: copying a scratch stage's root would also copy its root directory's
# mode onto the image's / and lock the non-root user out of everything.
COPY --from=runtime-files /app /app
COPY --from=runtime-files /models /models
