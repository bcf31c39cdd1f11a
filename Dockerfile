# podlb-agent: the node agent image (docs/install.md). Build and push:
#   docker build --build-arg VERSION=0.1.0 --build-arg COMMIT=$(git rev-parse --short HEAD) \
#     -t REGISTRY/podlb-agent:0.1.0 .
#   docker push REGISTRY/podlb-agent:0.1.0
# The Python dependencies are pinned in requirements.lock (tests/integration/test_deploy.py
# checks it against pyproject.toml and lints this file).
# The base needs python, pip and /bin/sh. The standard one is the public Python image; the
# real-cluster tests (tests/cluster/images.py) build one from Debian's python3 packages, so
# nothing below may assume where the installed packages live.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY agent ./agent
# VERSION, when given, must be the package's version (agent/__init__.py): a mismatched tag
# fails the build instead of shipping a wrong version.
ARG VERSION=""
ARG COMMIT=unknown
RUN printf 'COMMIT = "%s"\n' "$COMMIT" > agent/_build.py \
 && built="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' agent/__init__.py)" \
 && if [ -n "$VERSION" ] && [ "$VERSION" != "$built" ]; then \
      echo "VERSION=$VERSION but agent/__init__.py says $built" >&2; exit 1; \
    fi \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=""
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="podlb-agent" \
      org.opencontainers.image.description="Node agent for direct-to-pod load balancing on Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /wheels /wheels
# --no-index: only the wheels built above, i.e. exactly requirements.lock and the agent.
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && python -OO -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
# No docstrings in memory (the kubernetes client's are ~11 MiB) and fewer malloc arenas:
# see bench/agent_footprint.py. A fixed mmap threshold: glibc otherwise raises it to the size
# of the largest buffer freed (a 7 MB list page), and later buffers that size come from the
# heap and stay there (README, leader at cluster scale). iproute2 is not needed: the agent
# speaks netlink itself.
ENV PYTHONOPTIMIZE=2 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The node API: /healthz /readyz /metrics /v1/pods (--listen).
EXPOSE 9808
# Runs as root (uid 0) on purpose: the DaemonSet drops every capability but SYS_ADMIN, which a
# non-root user could only hold as an ambient capability (docs/security.md).
ENTRYPOINT ["podlb-agent"]
CMD ["run"]
