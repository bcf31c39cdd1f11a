# podlb-agent: the node agent image. Build and push:
#   docker build --build-arg COMMIT=$(git rev-parse --short HEAD) -t REGISTRY/podlb-agent:0.1.0 .
#   docker push REGISTRY/podlb-agent:0.1.0
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY agent ./agent
ARG COMMIT=unknown
RUN printf 'COMMIT = "%s"\n' "$COMMIT" > agent/_build.py \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && python -OO -m compileall -q /usr/local/lib/python3.11/site-packages
# No docstrings in memory (the kubernetes client's are ~11 MiB) and fewer malloc arenas:
# see bench/agent_footprint.py. iproute2 is not needed: the agent speaks netlink itself.
ENV PYTHONOPTIMIZE=2 \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["podlb-agent"]
CMD ["run"]
