#!/usr/bin/env bash
# Prints one hash of everything the GPU tests exercise that CI cannot run: the CUDA kernels and
# their committed PTX, the cuBLAS forwarder, the GPU engine's Java code and the GPU tests.
# scripts/device/gpu-run.sh records it with each GPU run (.ci/last-gpu-run.json); .ci/run warns
# when the files have changed since.
set -euo pipefail
cd "$(dirname "$0")/../.."
git ls-files -co --exclude-standard -- kernels native src/main/java/org/loramerge/engine/cuda \
    src/main/resources/org/loramerge src/test/java/org/loramerge/engine/cuda |
  LC_ALL=C sort | while read -r f; do
    [ -f "$f" ] && printf '%s  %s\n' "$(sha256sum < "$f" | cut -c1-64)" "$f"
  done | sha256sum | cut -c1-16
