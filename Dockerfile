# syntax=docker/dockerfile:1
#
# The tandem-operator image: the wheel built from this repository, installed into a slim
# Python runtime, run as a non-root user. Build it where a container engine is available:
#
#   docker build -t tandem-operator:0.1.0 .
#
# Two stages: the builder has pip's build tooling and produces the wheel; the runtime stage
# installs only that wheel (and its pinned dependencies) into a virtual environment, so no
# compiler, source tree or build cache ends up in the image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/tandem/bin:$PATH
COPY --from=builder /wheels /wheels
RUN python -m venv /opt/tandem \
    && /opt/tandem/bin/pip install /wheels/*.whl \
    && rm -rf /wheels
# The same uid/gid as distroless "nonroot"; the chart's podSecurityContext matches it. The
# root filesystem can be mounted read-only: the operator writes nothing outside /tmp.
USER 65532:65532
WORKDIR /tmp
# kopf's health endpoint (the chart's probes) and Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["tandem-operator"]
CMD ["run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
