#!/usr/bin/env bash
# On the GPU machine (CUDA toolkit and python3 there): probes the device's rcp.approx.ftz.f32 with
# scripts/device/rcp_approx_table.cu and writes the table CudaFastMath reads, zlib-compressed, to
# $OUT/rcp_approx_ftz.bits.z, with its sha256 (of the uncompressed 1 MiB) printed. Commit it as
# src/main/resources/org/loramerge/quant/rcp_approx_ftz.bits.z when the device is a new kind and
# the printed sha256 differs from CudaFastMathTest's (a GPU whose approximation differs from the
# committed table's: say so in docs/FORMATS.md §5 before replacing anything).
#   bash scripts/device/make-rcp-table.sh      (from the repository root, there)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
nvcc -O2 -arch=native -o "$build/rcp" scripts/device/rcp_approx_table.cu
"$build/rcp" "$build/table.bin"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
"${PYTHON:-python3}" - "$build/table.bin" "$OUT/rcp_approx_ftz.bits.z" <<'PY'
import hashlib, sys, zlib
raw = open(sys.argv[1], "rb").read()
assert len(raw) == 1 << 20
open(sys.argv[2], "wb").write(zlib.compress(raw, 9))
print("sha256 of the table:", hashlib.sha256(raw).hexdigest())
PY
