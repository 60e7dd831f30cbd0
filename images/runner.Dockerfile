# The node-Job image: bash, coreutils and an SSH client, nothing else, as a non-root user.
# The Job copies the node script and its parameters over SSH and runs the script on the
# node (docs/node-script.md); the work happens there.
# Build: docker build -f images/runner.Dockerfile -t upchain-runner images
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin runner
USER 65532:65532
ENTRYPOINT ["/bin/bash"]
