# wsrelay: the relay as a container (docs/fleet.md).
#
#   docker build -t wsrelay:0.1.0 .
#   docker run -p 8765:8765 -v $PWD/relay.toml:/etc/wsrelay/relay.toml:ro wsrelay:0.1.0
#
# `make image` builds it with buildah (no daemon), and `make image-check` runs it as the
# Kubernetes manifests do and checks it from the host (tools/image.py; docs/fleet.md,
# "Container and Kubernetes"). Where python:3.11-slim cannot be pulled, tools/image.py builds a stand-in base
# from Debian's packages and passes it as BASE_IMAGE (and python3.11-dev in BUILD_PACKAGES,
# since that base has no headers of its own).
#
# The admin port (9100) listens on the container's loopback unless the config sets
# [relay] admin_host: the HEALTHCHECK below runs inside the container and reaches it there.
# To publish it (-p 9100:9100), set admin_host = "0.0.0.0" and an admin_token (or
# WSRELAY_ADMIN_TOKEN): it shows client addresses and can end sessions.
#
# Stage 1 builds the wheel (the Cython pump needs a compiler) and the wheels of its
# dependencies; stage 2 installs only those wheels on a slim image and runs as a
# non-root user. The relay's own config is mounted at /etc/wsrelay/relay.toml (on
# Kubernetes: the ConfigMap of deploy/kubernetes/configmap.yaml).

# The base of both stages: any image with python and pip on PATH and apt-get (the official
# python:X.Y-slim images); the build stage also needs the Python headers (BUILD_PACKAGES).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG BUILD_PACKAGES="gcc libc6-dev"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${BUILD_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY csrc ./csrc
COPY src ./src
# The pins `make test` tests with (picows, uvloop, httptools, Cython, ...): the image runs the
# versions the suite and the benchmark gate ran.
COPY benchmarks/constraints.txt ./constraints.txt
RUN pip install --no-cache-dir --upgrade pip \
 && PIP_CONSTRAINT=/src/constraints.txt PIP_BUILD_CONSTRAINT=/src/constraints.txt \
    pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wsrelay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels wsrelay \
 && rm -rf /wheels
USER 10001:10001
# 8765: the public WebSocket port ([relay] port); 9100: /healthz, /readyz, /metrics ([relay] admin_port),
# on loopback unless [relay] admin_host says otherwise.
EXPOSE 8765 9100
# Liveness as Docker sees it: the admin port's /healthz (no curl in a slim image: Python asks).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsrelay"]
CMD ["serve", "--config", "/etc/wsrelay/relay.toml"]
