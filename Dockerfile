# jobsd: build the release binary, then ship it alone on a small, non-root runtime image.

# The toolchain link/hot-functions.txt was written with: its symbol names carry the compiler's
# version (see scripts/hot-functions).
FROM rust:1.95.0-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# A static binary, glibc linked in: no shared libraries to map at run time (most of a small
# daemon's resident set) and none needed in the runtime image. The target is named so that the
# flag reaches the binary but not the build's own proc-macros.
ENV RUSTFLAGS="-C target-feature=+crt-static"
# Dependencies first, in a layer of their own: source edits do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY link link
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target "$(rustc -vV | sed -n 's/^host: //p')" \
    && rm -rf src
COPY migrations migrations
COPY src src
# Touch the sources so cargo rebuilds the crate over the placeholder above.
RUN touch src/main.rs src/lib.rs \
    && target="$(rustc -vV | sed -n 's/^host: //p')" \
    && cargo build --release --locked --target "$target" \
    && strip --strip-all --output-file /jobsd "target/$target/release/jobsd"

# Distroless static: CA certificates, time zones and /tmp; no libc, shell or package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /jobsd /usr/local/bin/jobsd
# The distroless "nonroot" user, by number so that Kubernetes can check runAsNonRoot.
USER 65532:65532
WORKDIR /home/nonroot
# For plain docker: liveness only, so a database outage never marks the container unhealthy
# (`jobsd health --ready` asks about the database). build.yaml's liveness probe is the same.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["jobsd", "health", "--max-age", "30s"]
ENTRYPOINT ["jobsd"]
CMD ["run"]
