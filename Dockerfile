# tpvd container image: build on Debian 12, run on Debian 12 slim with only runtime libraries.
# The image ships the daemon (/usr/local/bin/tpvd, the entrypoint) and the client
# (/usr/local/bin/tpvctl: `docker exec CONTAINER tpvctl study list`).
#   docker build -t tpvd .
#   docker run -d --name tpvd -p 8080:8080 -v tpvd-data:/var/lib/tpvd \
#     -v "$HOME/.tpvd/token:/run/secrets/tpvd-token:ro" \
#     -e TPVD_BOOTSTRAP_TOKEN_FILE=/run/secrets/tpvd-token tpvd
# It listens on 0.0.0.0, where tpvd needs an API token: TPVD_BOOTSTRAP_TOKEN_FILE gives a fresh
# data volume its first admin token (deploy/README.md says how to make the file).
FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      meson ninja-build pkg-config gcc libc6-dev \
      libmicrohttpd-dev libjansson-dev libcurl4-openssl-dev libsqlite3-dev \
      libopenblas-dev liblapacke-dev libssl-dev libpq-dev \
      protobuf-c-compiler libprotobuf-c-dev libonnx-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN meson setup /build --buildtype=release -Dtests=false -Dbench=false \
 && ninja -C /build \
 && install -Dm755 /build/server/tpvd /out/usr/local/bin/tpvd \
 && install -Dm755 /build/clients/tpvctl /out/usr/local/bin/tpvctl

FROM debian:12-slim AS runtime
# uid/gid 999 are fixed: deploy/k8s/tpvd.yaml runs as 999 and a mounted token file must be
# readable by it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libmicrohttpd12 libjansson4 libcurl4 libsqlite3-0 libopenblas0-pthread liblapacke \
      libssl3 libpq5 libprotobuf-c1 zlib1g ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 999 tpvd \
 && useradd --system --uid 999 --gid tpvd --home-dir /var/lib/tpvd --shell /usr/sbin/nologin tpvd \
 && install -d -o tpvd -g tpvd -m 0750 /var/lib/tpvd
COPY --from=build /out/ /
USER tpvd
VOLUME ["/var/lib/tpvd"]
EXPOSE 8080
ENV TPVD_LISTEN=0.0.0.0:8080 \
    TPVD_DATA_DIR=/var/lib/tpvd
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tpvd"]
