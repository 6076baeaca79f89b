"""torchrun / DistributedDataParallel for `compress`: rank and world from the environment, NCCL on CUDA
and gloo on the CPU, and what keeps every rank's network, scores, masks and prompt identical.

Without WORLD_SIZE (or with WORLD_SIZE=1) nothing here runs: no process group, no DDP wrapper, no
sampler; a single process trains exactly as before.

Why the ranks stay identical: DDP all-reduces (averages) the gradients of every trainable parameter
of the wrapped network, scores and prompt included (they are parameters of PromptedNet); trainable
parameters outside it (channel-mode scores live in ChannelMaskSet) are all-reduced explicitly. Every
rank then takes the same optimiser step and selects the same global top-k. BN running statistics are
averaged over ranks after every epoch (DDP's per-forward buffer broadcast would also send every mask,
the size of the weights, twice a batch).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import inspect
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from vpns_deploy.errors import UserError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when unset (a plain single process)."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"WORLD_SIZE={text!r} is not a positive integer", "launch with torchrun, or unset WORLD_SIZE")
    return int(text)


def check_batch(batch_size: int, world: int) -> None:
    """The global batch splits evenly over the processes (each takes batch_size / world images)."""
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} does not split over {world} processes",
                        f"pass a global batch divisible by {world}, e.g. {batch_size - batch_size % world or world}")


def env_rank() -> int:
    """RANK as torchrun sets it (0 outside a torchrun job): decides who writes, before any group exists."""
    return int(os.environ.get("RANK", "0"))


def join(device: torch.device) -> DistContext:
    """This process's place in the torchrun job, joining its process group on first use. The group lives
    until the command exits, so `run` and `sweep` reuse it for every compress they make."""
    world, rank, local = world_from_env(), env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized() and dist.get_backend() != backend:
        raise UserError(f"this torchrun job communicates with {dist.get_backend()} but the step runs on {device}",
                        "give every stage of the command the same --device")
    if not dist.is_initialized():
        die_with_launcher()
        try:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        except Exception as exc:  # noqa: BLE001 - rendezvous failures: one line
            raise UserError(f"cannot join the torchrun job as rank {rank} of {world} ({backend}): "
                            f"{(str(exc).strip().splitlines() or [''])[0][:300]}",
                            "check --rdzv-endpoint / MASTER_ADDR and that every node started") from None
        atexit.register(_end_group)
    return DistContext(rank, world, local, device, backend)


def _end_group() -> None:
    """Destroy the process group if this process still holds one (atexit, and leave() before it)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def leave() -> None:
    """End a finished command's torchrun job on every rank together: a barrier, then the group destroyed
    in the main thread. Once, in a CI-sized run, a rank aborted at exit ("terminate called without an
    active exception"), never reproduced; the likely cause is a rank tearing its Gloo threads down while
    a peer's last messages can still reach it, which the barrier rules out. Only after success: a failed
    rank leaves through the atexit handler alone."""
    if dist.is_initialized():
        dist.barrier()
        _end_group()


@contextlib.contextmanager
def session(device: torch.device, batch_size: int, sync_bn: bool = False) -> Iterator[DistContext | None]:
    """The torchrun job for one compress (None outside one); a failure inside becomes one line per rank."""
    world = world_from_env()
    if sync_bn and (world == 1 or device.type != "cuda"):
        raise UserError("--sync-bn needs several processes on CUDA GPUs (torch's SyncBatchNorm has no CPU kernels)",
                        "leave --sync-bn out, or launch with torchrun on GPUs")
    if world == 1:
        yield None
        return
    check_batch(batch_size, world)
    ctx = join(device)
    try:
        yield ctx
    except (UserError, KeyboardInterrupt, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a peer that died, a lost connection: one line per rank
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"process {ctx.rank} of {world} stopped: {type(exc).__name__}: {first}",
                        "a finished epoch's checkpoint is kept: run the same command again to resume from it") from None


def rank0_verdict(value: bool, device: str = "auto") -> bool:
    """Rank 0's `value` on every rank (a recipe's 'stage done?' must be the same everywhere, even on
    nodes that do not share rank 0's file system); `value` itself outside a torchrun job."""
    if world_from_env() == 1:
        return value
    from vpns_deploy.device import resolve_device

    ctx = join(resolve_device(device))
    where = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(value)], device=where)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def die_with_launcher() -> None:
    """torchrun starts its workers in their own sessions, so a launcher killed with SIGKILL (or a node
    that loses it) left them training on and holding the run's lock. Linux's parent-death signal ends
    a worker with its launcher instead (torchrun starts them from its main thread, whose exit is the
    launcher's); the last finished epoch's checkpoint is on disk already."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before the signal was armed
        os._exit(1)


def wrap(model: nn.Module, ctx: DistContext, sync_bn: bool) -> nn.Module:
    """The network DDP trains for one stage (built per stage: DDP registers the parameters that are
    trainable when it is made). The plain pass leaves the prompt unused, hence find_unused_parameters."""
    if sync_bn:
        set_sync_bn(model, True)
    if not any(p.requires_grad for p in model.parameters()):
        return model  # e.g. channel mode stage 1: only ChannelMaskSet's scores train (all-reduced explicitly)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                      else {"broadcast_buffers": False})  # the name changed in torch 2.14
    return DDP(model, device_ids=ids, find_unused_parameters=True, **no_buffer_sync)


def set_sync_bn(model: nn.Module, on: bool) -> None:
    """Swap BatchNorm2d <-> SyncBatchNorm in place by class, not by module replacement: mask hooks,
    channel groups and optimisers hold these very modules."""
    for m in model.modules():
        if on and type(m) is nn.BatchNorm2d:
            m.__class__ = nn.SyncBatchNorm
            m.process_group = None  # type: ignore[attr-defined]
        elif not on and type(m) is nn.SyncBatchNorm:
            m.__class__ = nn.BatchNorm2d


def outside_params(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The trainable params DDP does not reduce because they are not in the wrapped network."""
    inside = {id(p) for p in model.parameters()} if isinstance(model, DDP) else set()
    return [p for p in params if p.requires_grad and id(p) not in inside]


def allreduce_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of `params` over the ranks (all ranks hold the same set of None grads)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def average_bn_stats(model: nn.Module, world: int) -> None:
    """Every rank gets the mean of the ranks' BN running statistics (each saw its own images)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for t in (m.running_mean, m.running_var):
                dist.all_reduce(t)
                t /= world


RANK0_WORK_TIMEOUT = timedelta(hours=2)  # what rank 0 alone may take while the others wait (a latency search)


@contextlib.contextmanager
def rank0_alone() -> Iterator[None]:
    """For work rank 0 does alone (a latency search) while the others wait at the exit: on a gloo group of
    its own, so the wait blocks on a socket (a CUDA wait in an NCCL collective can spin a core while rank
    0 times on the CPU) and may last RANK0_WORK_TIMEOUT (NCCL's default gives up after 10 minutes)."""
    group = dist.new_group(backend="gloo", timeout=RANK0_WORK_TIMEOUT)
    try:
        yield
        dist.barrier(group=group)
    finally:
        dist.destroy_process_group(group)


def broadcast_bytes(data: bytes | None, ctx: DistContext) -> bytes:
    """Rank 0's bytes on every rank."""
    where = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=where)
    dist.broadcast(size, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(where) if ctx.is_main and data
           else torch.empty(int(size), dtype=torch.uint8, device=where))
    if int(size):
        dist.broadcast(buf, 0)
    return bytes(buf.cpu().numpy()) if int(size) else b""


def broadcast_state(state: dict | None, ctx: DistContext) -> dict | None:
    """Rank 0's checkpoint state on every rank (read there with weights_only: nothing is unpickled,
    and no rank needs to see rank 0's file system)."""
    payload = None
    if ctx.is_main and state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
    data = broadcast_bytes(payload, ctx)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True) if data else None


def state_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' bytes in key order (bit-identical tensors <=> equal checksums)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_checksums(checksum: str, ctx: DistContext) -> list[str]:
    """Every rank's checksum, on every rank (as bytes in a tensor: all_gather_object would unpickle)."""
    where = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    mine = torch.tensor(list(bytes.fromhex(checksum)), dtype=torch.uint8, device=where)
    out = [torch.empty_like(mine) for _ in range(ctx.world)]
    dist.all_gather(out, mine)
    return [bytes(t.cpu().tolist()).hex() for t in out]


def stage_runner(model: nn.Module, params: list[nn.Parameter], ctx: DistContext,
                 sync_bn: bool) -> tuple[nn.Module, Callable[[], None] | None]:
    """(what the stage's forward runs, what reduces the gradients DDP does not) for one stage."""
    runner = wrap(model, ctx, sync_bn)
    extra = outside_params(runner, params)
    return runner, (lambda: allreduce_grads(extra, ctx.world)) if extra else None


def identical_on_ranks(state: dict[str, torch.Tensor], stage: str, ctx: DistContext) -> list[str]:
    """Every rank's checksum of `state` (network, scores, masks, prompt, BN statistics); a one-line
    error on every rank if any differs, since the ranks would then ship different models."""
    sums = gather_checksums(state_checksum(state), ctx)
    if len(set(sums)) != 1:
        raise UserError(f"the processes hold different networks after stage {stage} (checksums {sums})",
                        "this is a bug in vpns-deploy's distributed training; run with one process meanwhile")
    return sums


def sharded_top1_pair(model: nn.Module, data, device: torch.device, with_prompt: bool,
                      ctx: DistContext) -> tuple[float, float | None]:
    """top1_pair over the whole set, each rank evaluating every world-th image and the correct counts
    summed over ranks: the same numbers on every rank, in 1/world of the time."""
    from vpns_deploy.evaluate import top1_pair

    part = data.select(torch.arange(ctx.rank, len(data), ctx.world))
    plain, prompted = top1_pair(model, part, device, with_prompt) if len(part) else (0.0, 0.0 if with_prompt else None)
    where = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    counts = torch.tensor([round(plain * len(part)), round((prompted or 0.0) * len(part))], dtype=torch.int64,
                          device=where)
    dist.all_reduce(counts)
    n = max(1, len(data))
    return int(counts[0]) / n, (int(counts[1]) / n if with_prompt else None)
