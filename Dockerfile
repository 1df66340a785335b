# dcr-sidecar container image.
#   docker build -t dcr-sidecar .
#   docker run --rm -p 9090:9090 -v "$PWD/my.yaml:/etc/dcr-sidecar/sidecar.yaml:ro" dcr-sidecar
# Stage 1 builds wheels for the package and its runtime dependencies (versions constrained by
# the lock file); stage 2 installs only those wheels on a clean slim base, runs as a non-root
# numeric user and writes nothing outside its state volume.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements-dev.lock README.md ./
COPY dcr_sidecar ./dcr_sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements-dev.lock .

FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dcr-sidecar" \
      org.opencontainers.image.description="OAuth 2 Dynamic Client Registration as a sidecar: registers clients and injects their credentials into an app's OAuth traffic" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DCR_SIDECAR_CONFIG=/etc/dcr-sidecar/sidecar.yaml
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && mkdir -p /var/lib/dcr-sidecar \
    && chown 10001:10001 /var/lib/dcr-sidecar \
    && chmod 0700 /var/lib/dcr-sidecar
COPY config/container.yaml /etc/dcr-sidecar/sidecar.yaml
USER 10001:10001
WORKDIR /var/lib/dcr-sidecar
VOLUME ["/var/lib/dcr-sidecar"]
# 8080: back channel (loopback inside the pod by default); 9090: /healthz /readyz /metrics /admin
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]
ENTRYPOINT ["dcr-sidecar"]
CMD ["serve"]
