# mapcast in a container: built with the locked dependencies (TLS is rustls
# throughout), run as an unprivileged user on a slim base.

FROM rust:1.95-bookworm AS build
WORKDIR /src

# The dependencies in a layer of their own, rebuilt only when a manifest or
# Cargo.lock change: stub sources stand in for mapcast's own, for the other
# workspace members' (bench/) and for the benches the manifest names, or the
# workspace does not load. The stubs' outputs are then forgotten: the real
# sources keep their (older) times, and cargo would take the stub binary for
# up to date.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/
COPY bench/readloop/Cargo.toml bench/readloop/
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for member in bench bench/readloop; do \
        mkdir -p "$member/src" && echo 'fn main() {}' > "$member/src/main.rs" && touch "$member/src/lib.rs"; \
    done \
    && for bench in $(awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } b && $1 == "name" { gsub(/"/, "", $3); print $3 }' Cargo.toml); do \
        echo 'fn main() {}' > "benches/$bench.rs"; \
    done \
    && cargo build --release --locked --bin mapcast \
    && rm -rf src benches bench \
    && rm -rf target/release/.fingerprint/mapcast-* target/release/deps/mapcast-* \
        target/release/deps/libmapcast-* target/release/build/mapcast-*

# .git stays in the context so the build records its commit for crash reports.
COPY . .
# The release profile keeps line tables (Cargo.toml). They move, compressed,
# to mapcast.debug beside the binary, which names it (.gnu_debuglink): the
# shipped binary is stripped, and the standard library's backtrace reader
# follows the link (and reads zlib-compressed sections), so crash reports
# still show file and line. x86-64: 227 MB before, now 32 MB + 46 MB.
RUN cargo build --release --locked --bin mapcast \
    && objcopy --only-keep-debug --compress-debug-sections=zlib \
        target/release/mapcast /usr/local/bin/mapcast.debug \
    && objcopy --strip-all --add-gnu-debuglink=/usr/local/bin/mapcast.debug \
        target/release/mapcast /usr/local/bin/mapcast

FROM debian:bookworm-slim
# curl: the health check and the one-shot setup services (dashboards/*.sh).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/mapcast mapcast \
    && mkdir -p /var/lib/mapcast /var/log/mapcast \
    && chown mapcast /var/lib/mapcast /var/log/mapcast
COPY --from=build /usr/local/bin/mapcast /usr/local/bin/mapcast.debug /usr/local/bin/
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
