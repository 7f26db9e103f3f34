# mapcast in a container: built with the locked dependencies (TLS is rustls
# throughout), run as an unprivileged user on a slim base.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# .git stays in the context so the build records its commit for crash reports.
RUN cargo build --release --locked --bin mapcast \
    && cp target/release/mapcast /usr/local/bin/mapcast

FROM debian:bookworm-slim
# curl: the health check and the one-shot setup service (dashboards/setup.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/mapcast mapcast \
    && mkdir -p /var/lib/mapcast /var/log/mapcast \
    && chown mapcast /var/lib/mapcast /var/log/mapcast
COPY --from=build /usr/local/bin/mapcast /usr/local/bin/mapcast
COPY dashboards /usr/share/mapcast/dashboards
USER mapcast
ENV MAPCAST_DATA_DIR=/var/lib/mapcast \
    MAPCAST_MQTT_LISTEN=0.0.0.0:1883 \
    MAPCAST_HTTP_LISTEN=0.0.0.0:8080
EXPOSE 1883 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["mapcast"]
CMD ["serve"]
