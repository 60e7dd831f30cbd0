# The operator image: the static-glibc `upchain` binary on distroless, as a non-root user.
# Build from the repository root: docker build -f images/operator.Dockerfile -t upchain .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p upchain-operator \
 && install -D -m 0755 target/release/upchain /out/upchain

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/upchain /usr/local/bin/upchain
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/upchain"]
CMD ["run"]
