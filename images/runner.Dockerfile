# The node-Job image: bash and an SSH client, nothing else, as a non-root user. The Job
# streams the node script over SSH; the work happens on the node.
# Build: docker build -f images/runner.Dockerfile -t upchain-runner images
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin runner
USER 65532:65532
ENTRYPOINT ["/bin/bash"]
