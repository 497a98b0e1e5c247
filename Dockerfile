# loramerge's command line in a container, for a Linux x86-64 host with an NVIDIA GPU.
# Not built in this repository's CI: the development machines have no container engine.
#
#   docker build -t loramerge .
#   docker run --rm --gpus all -v "$PWD/models:/models" loramerge \
#       merge --base /models/base --adapter /models/adapter --out /models/merged
#
# The host needs the NVIDIA driver r580 or newer (the committed PTX is ISA 9.0, docs/GPU.md §3) and
# the NVIDIA Container Toolkit, which mounts the driver into the container (--gpus). The runtime
# image brings cuBLAS 12, so JCublas loads it directly and the cuBLAS 13 forwarder stays unused.
# Without --gpus, --device auto merges on the CPU. The output belongs to root unless you add
# --user "$(id -u):$(id -g)".

FROM maven:3.9-eclipse-temurin-17 AS build
WORKDIR /src
COPY pom.xml ./
COPY src ./src
RUN mvn -q -B -DskipTests package

FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/loramerge-cli.jar /opt/loramerge/loramerge-cli.jar
COPY loramerge LICENSE /opt/loramerge/
RUN chmod 0755 /opt/loramerge/loramerge && ln -s /opt/loramerge/loramerge /usr/local/bin/loramerge
ENTRYPOINT ["loramerge"]
CMD ["--help"]
