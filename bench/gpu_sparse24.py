"""2:4 where PyTorch can run it: ResNet-50's 1x1 convolutions as GEMMs, dense vs semi-structured sparse.

PyTorch has no sparse convolution, but a 1x1 convolution over a channels-last tensor is a matrix
product: (N*H*W, C_in) @ W^T, with stride 2 a subsampling first. Each unique 1x1 layer shape of
torchvision's ResNet-50 at 224 px is timed in fp16 with CUDA events as `F.linear` with its weight
pruned to 2:4 along C_in, dense and through `torch.sparse.to_sparse_semi_structured`, at each batch.
The end-to-end bound is Amdahl's: the whole network's dense fp16 time T (eager, channels-last) over
T minus what the 2:4 GEMMs save on every 1x1 layer; every 3x3 convolution, the stem and everything
else stays dense.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NO_SPARSE_CONV = ("PyTorch has no sparse convolution: only the 1x1 convolutions (as F.linear over channels-last "
                  "input) can run 2:4; the 3x3 convolutions, the stem and the rest stay dense")


def prune_2of4(w: torch.Tensor) -> torch.Tensor:
    """w with the 2 largest |w| of every 4 consecutive input-channel weights kept (rows: outputs)."""
    groups = w.reshape(w.shape[0], -1, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(w.shape)


def one_by_one_layers(size: int) -> list[dict]:
    """Every 1x1 conv of ResNet-50 (random weights) with the input shape it sees at `size` px, batch 1."""
    from torchvision.models import resnet50

    net = resnet50().eval()
    layers: list[dict] = []

    def hook(name: str) -> Callable:
        def record(module: nn.Conv2d, args: tuple) -> None:
            _, c, h, w = args[0].shape
            layers.append({"name": name, "c_in": c, "c_out": module.out_channels, "h": h, "w": w,
                           "stride": module.stride[0]})
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in net.named_modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return layers


def _timer(device: torch.device, repeats: int, warmup: int) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of `fn` over `repeats` calls after `warmup` (CUDA events on a GPU)."""
    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return measure


def sparse_reason(device: torch.device) -> str | None:
    """Why semi-structured sparse kernels cannot run here (None: they can)."""
    if device.type != "cuda":
        return "torch.sparse.to_sparse_semi_structured needs a CUDA GPU (compute capability 8.0 or newer)"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return f"compute capability {torch.cuda.get_device_capability(device)} < (8, 0)"
    return None


@torch.no_grad()
def measure(device: torch.device, batches: tuple[int, ...], size: int = 224, repeats: int = 20, warmup: int = 5,
            dtype: torch.dtype = torch.float16) -> dict:
    """Per unique 1x1 layer shape and batch: dense and 2:4 GEMM ms; the whole network's time; the bound."""
    from torch.sparse import to_sparse_semi_structured
    from torchvision.models import resnet50

    layers = one_by_one_layers(size)
    shapes: dict[tuple, dict] = {}
    for layer in layers:
        key = (layer["c_in"], layer["c_out"], layer["h"], layer["w"], layer["stride"])
        shapes.setdefault(key, {**{k: layer[k] for k in ("c_in", "c_out", "h", "w", "stride")}, "layers": []})
        shapes[key]["layers"].append(layer["name"])
    reason = sparse_reason(device)
    timed = _timer(device, repeats, warmup)
    net = resnet50().eval().to(device, dtype, memory_format=torch.channels_last)
    out: dict = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "input_size": size,
                 "layers_1x1": len(layers), "unique_shapes": len(shapes), "note": NO_SPARSE_CONV,
                 "sparse_skipped": reason, "batches": {}}
    torch.manual_seed(0)
    for b in batches:
        rows, saved = [], 0.0
        for shape in shapes.values():
            h, w = -(-shape["h"] // shape["stride"]), -(-shape["w"] // shape["stride"])
            x = torch.randn(b * h * w, shape["c_in"], device=device, dtype=dtype)
            weight = prune_2of4(torch.randn(shape["c_out"], shape["c_in"], device=device)).to(dtype)
            row = {**{k: v for k, v in shape.items() if k != "layers"}, "count": len(shape["layers"]),
                   "tokens": b * h * w, "dense_ms": timed(lambda: F.linear(x, weight))}
            if reason is None:
                try:
                    sparse = to_sparse_semi_structured(weight)
                    row["backend"] = type(sparse).__name__
                    got, want = F.linear(x, sparse).float(), F.linear(x, weight).float()
                    row["max_rel_diff"] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
                    row["sparse_ms"] = timed(lambda: F.linear(x, sparse))
                    row["speedup"] = row["dense_ms"] / row["sparse_ms"]
                    saved += row["count"] * (row["dense_ms"] - row["sparse_ms"])
                except (RuntimeError, ValueError, NotImplementedError) as exc:  # this shape only; the rest go on
                    row["sparse_error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            rows.append(row)
            del x, weight
        image = torch.randn(b, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        total = timed(lambda: net(image))
        dense_1x1 = sum(r["count"] * r["dense_ms"] for r in rows)
        entry = {"layers": rows, "network_dense_ms": total, "one_by_one_dense_ms": dense_1x1,
                 "one_by_one_fraction": dense_1x1 / total}
        if reason is None and not any("sparse_error" in r for r in rows):
            entry["one_by_one_saved_ms"] = saved
            entry["end_to_end_speedup_bound"] = total / max(total - saved, 1e-9)
        out["batches"][str(b)] = entry
        del image
    return out
