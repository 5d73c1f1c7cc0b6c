#!/usr/bin/env python3
"""PyTorch figures beside rankzip's CUDA table, for the routines rankzip picks (run on the GPU machine).

anchors.py times torch.linalg.svd with its default driver; rankzip uses gesvda (checked) and gesvd, so this
times those drivers by name, on device-resident float64 data, plus host<->device copies of 128 MiB from
pageable and pinned memory (rankzip's backend copies its operands each call).
"""
import time, torch
torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda"

def best(f, reps=3):
    f(); torch.cuda.synchronize()
    b = 1e9
    for _ in range(reps):
        s = time.perf_counter(); f(); torch.cuda.synchronize(); b = min(b, time.perf_counter() - s)
    return b

for m, n in ((4096, 4096), (11008, 4096)):
    W = torch.randn(m, n, device=dev, dtype=torch.float64)
    for drv in ("gesvda", "gesvd"):
        print(f"torch svd {m}x{n} float64 driver={drv} {best(lambda: torch.linalg.svd(W, full_matrices=False, driver=drv), 2):.4f}", flush=True)
nbytes = 128 << 20
for pinned in (False, True):
    h = torch.empty(nbytes // 8, dtype=torch.float64, pin_memory=pinned)
    d = torch.empty_like(h, device=dev)
    up = best(lambda: d.copy_(h))
    down = best(lambda: h.copy_(d))
    print(f"torch copy 128MiB {'pinned' if pinned else 'pageable'}: HtoD {nbytes/up/1e9:.1f} GB/s, DtoH {nbytes/down/1e9:.1f} GB/s", flush=True)
