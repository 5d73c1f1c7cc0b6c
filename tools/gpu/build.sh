#!/usr/bin/env bash
# Builds, on a machine with Go, what tools/gpu/check.sh runs on the GPU machine, into gpu/ (ignored by git):
# cuda-tagged test binaries of kernels and methods/svd with the OpenBLAS runtime libraries and gpu/run.sh.
# Needs the CUDA headers and link stubs: SHARED_CUDA (default ../shared/cuda) holds include-11.8.tar.xz,
# stubs-13.0/ and bundle.sh, as on our developers' machines.
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${SHARED_CUDA:-../shared/cuda}
rm -rf gpu
bash "$shared/bundle.sh" gpu ./kernels ./methods/svd
cp "$shared/anchors.py" gpu/
# What travels to the GPU machine is limited to 64 MiB: pack it (tools/gpu/check.sh unpacks).
tar -cf - gpu | xz -T0 -6 >gpu.tar.xz
du -sh gpu.tar.xz
