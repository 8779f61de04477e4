# syntax=docker/dockerfile:1
# The thaw image: one static binary (`thaw operator`, `thaw activator`,
# `thaw crd`) on distroless/static, running as the nonroot user 65532.
# Build from the repository root (`make images` does):
#   docker build -t thaw.dev/thaw:0.1.0 .
# These development machines have no Docker engine; CI's kind job builds it.

ARG RUST_VERSION=1.95

# musl on Alpine links statically by default; ring needs a C compiler.
FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache gcc musl-dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p thaw \
 && install -D target/release/thaw /out/thaw

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/thaw /thaw
USER 65532:65532
ENTRYPOINT ["/thaw"]
