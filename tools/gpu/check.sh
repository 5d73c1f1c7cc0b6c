#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after tools/gpu/build.sh built gpu/ here:
#   bash tools/gpu/check.sh [OUTDIR]
# CUDA conformance and agreement tests, rankzip's timing table, the whitened-SVD benchmark on the CUDA backend,
# and PyTorch's figures for the same shapes in the same run. Output also goes to OUTDIR/gpu-check.txt.
set -uo pipefail
out=${1:-${OUT:-/tmp}}
b=gpu
[ -d $b ] || tar -xJf gpu.tar.xz
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== kernels: CUDA tests (conformance, agreement with OpenBLAS at 4096, SVD paths, device memory)"
bash $b/run.sh $b/kernels.test -test.v -test.run 'Conformance/cuda|BackendsAgree/cuda|CUDA' -test.timeout 20m 2>&1 | grep -v '^=== RUN\|^    --- PASS' | tail -80
echo "== kernels: timing table"
bash $b/run.sh $b/kernels.test -test.run 'CUDATable|CUDACopyTable' -cudatable 2>&1 | grep '^|\|rankzip\|FAIL\|ok'
echo "== methods/svd: whitened SVD on the CUDA backend"
bash $b/run.sh $b/svd.test -test.run XXX -test.bench 'Whiten' -test.benchtime 1x -large 2>&1 | grep 'Benchmark\|ok\|FAIL'
echo "== PyTorch (../shared/cuda/anchors.py)"
python3 $b/anchors.py 2>&1 | grep -v gptq
echo "== PyTorch, rankzip's drivers and copies"
python3 tools/gpu/extra_anchors.py 2>&1
} 2>&1 | tee "$out/gpu-check.txt"
