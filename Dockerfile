# voltha-xds container images (docs/deploy.md).
#
#   docker build -t voltha-xds:0.1.0 .                               # the server (last stage)
#   docker build --target fake-core -t voltha-fake-core:0.1.0 .      # the fake VOLTHA core
#
# Stage "build" compiles both binaries. The protos are compiled by protox inside build.rs, so
# no protoc is needed; rustls with ring needs only the C compiler the image already has. The
# runtime stages are Debian slim (same glibc as the build stage; /bin/sh is there for the
# `voltha-xds bootstrap > file` init step) with one non-root user, uid/gid 10001, and nothing
# but the binary (and, for the server, config/).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# The source revision in `voltha_xds_build_info` and `--version` (the context has no .git):
#   docker build --build-arg VOLTHA_XDS_REVISION=$(git rev-parse --short=12 HEAD) ...
ARG VOLTHA_XDS_REVISION=unknown
WORKDIR /src
# Everything the build reads: the manifest and lock file, build.rs and the vendored protos,
# the sources (the root package's and the xDS engine crate's), and config/ (config/voltha-xds.yaml is embedded as the default configuration).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto-vendor/ proto-vendor/
COPY config/ config/
COPY src/ src/
COPY crates/ crates/
RUN cargo build --release --locked --bin voltha-xds --bin voltha-fake-core \
 && mkdir -p /out \
 && cp target/release/voltha-xds target/release/voltha-fake-core /out/ \
 && strip /out/voltha-xds /out/voltha-fake-core

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN groupadd --system --gid 10001 voltha \
 && useradd --system --uid 10001 --gid voltha --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin voltha

# The fake VOLTHA core (docker-compose.yml runs two). It stops on SIGINT.
FROM runtime AS fake-core
COPY --from=build /out/voltha-fake-core /usr/local/bin/voltha-fake-core
USER 10001:10001
EXPOSE 50556
STOPSIGNAL SIGINT
ENTRYPOINT ["voltha-fake-core"]
CMD ["--id", "vcore-0", "--listen", "0.0.0.0:50556"]

# The server: the default image. The working directory holds config/, so the shipped
# configurations are at config/*.yaml and the embedded default finds config/assignment.json.
# The admin API listens on 0.0.0.0 here (the binary's default is loopback) so that probes and
# port mappings reach it.
FROM runtime AS voltha-xds
COPY --from=build /out/voltha-xds /usr/local/bin/voltha-xds
COPY config/ /app/config/
WORKDIR /app
USER 10001:10001
EXPOSE 18000 18080
ENTRYPOINT ["voltha-xds"]
CMD ["serve", "--xds-listen", "0.0.0.0:18000", "--admin-listen", "0.0.0.0:18080"]
