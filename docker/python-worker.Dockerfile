# syntax=docker/dockerfile:1.7
# The Python GPU worker: torch (with its CUDA 13 wheels), transformers, trl, peft, bitsandbytes and the
# vlmflow-worker package on a CUDA base; non-root; HEALTHCHECK calls the Health RPC.
#   docker build -f docker/python-worker.Dockerfile -t vlmflow/python-worker .      (from the repository root)
# The host needs an NVIDIA driver for CUDA 13 (>= 580) and the NVIDIA Container Toolkit.

# torch 2.11's PyPI wheels bring their own CUDA 13 libraries (nvidia-* wheels), so the base only has to match
# the driver API; the `base` flavour avoids a second copy of cuBLAS/cuDNN.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates openssl \
    && rm -rf /var/lib/apt/lists/*

# 1. Dependencies, from pyproject.toml + requirements.lock only: this layer is rebuilt when they change,
#    not when the worker's code does.
FROM base AS deps
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY python-worker/pyproject.toml python-worker/requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cuda']))" >requirements.txt \
    && pip install -r requirements.txt -c requirements.lock

# 2. The package itself (hand-written and generated code), without touching the dependencies.
FROM deps AS build
COPY python-worker/src ./src
COPY python-worker/gen ./gen
RUN pip install --no-deps --no-cache-dir . && python -c "import vlmflow_worker.serve.server, vlmflow.v1.worker_pb2"

# 3. The runtime: the venv, a non-root user, the certificate helper the compose `certs` job runs. The folders
#    named volumes mount on exist here, owned by that user, so a fresh volume starts out writable by it.
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
COPY --chmod=755 docker/gen-certs.sh /usr/local/bin/vlmflow-gen-certs
RUN groupadd --gid 10001 vlmflow \
    && useradd --uid 10001 --gid vlmflow --create-home --shell /usr/sbin/nologin vlmflow \
    && mkdir -p /artifacts /certs /home/vlmflow/.cache/huggingface \
    && chown vlmflow:vlmflow /artifacts /certs /home/vlmflow/.cache /home/vlmflow/.cache/huggingface
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/vlmflow/.cache/huggingface \
    VLMFLOW_WORKER_HOST=0.0.0.0 \
    VLMFLOW_WORKER_PORT=50051 \
    VLMFLOW_ARTIFACT_ROOT=/artifacts
USER vlmflow
WORKDIR /home/vlmflow
EXPOSE 50051
# Binding 0.0.0.0 needs TLS and a token (or VLMFLOW_WORKER_INSECURE=1): the worker refuses to start otherwise.
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
    CMD ["python", "-m", "vlmflow_worker.serve.healthcheck"]
ENTRYPOINT ["python", "-m", "vlmflow_worker"]
CMD ["serve"]
