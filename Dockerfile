# jobwarden's image: `jobwarden` (the entrypoint) and `jobwarden-init`, built from this
# repository, on a distroless runtime: glibc, CA certificates, no shell, no package manager,
# user nonroot (65532).
#   docker build -t REGISTRY/jobwarden:0.1.0 .
# The build is the README's (`cargo run --release …` builds with the release profile) for both
# binaries, with the committed Cargo.lock; `.ci/run` lints this file with hadolint and checks
# that the README shows the same cargo command (scripts/lint-deploy.sh).
#
# Base images pinned by version and by the digest of their multi-platform index; to move to a
# newer one: `docker buildx imagetools inspect IMAGE:TAG` prints the digest.

# rust-version in Cargo.toml is 1.94; this is the toolchain CI builds and tests with.
FROM rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo build --release --locked --bin jobwarden --bin jobwarden-init

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
# `[kubernetes] init_path` (the Jobs' entrypoint, `jobwarden manifest job`) is
# /usr/local/bin/jobwarden-init: job images copy it from this one, e.g.
#   COPY --from=REGISTRY/jobwarden:0.1.0 /usr/local/bin/jobwarden-init /usr/local/bin/
COPY --from=build /src/target/release/jobwarden /src/target/release/jobwarden-init /usr/local/bin/
USER 65532:65532
EXPOSE 7800
ENTRYPOINT ["/usr/local/bin/jobwarden"]
# The Deployment (deploy/base/deployment.yaml) passes its own arguments.
CMD ["run", "--runtime=kubernetes"]
