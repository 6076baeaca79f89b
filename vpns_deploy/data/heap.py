"""Keep the training step's memory mapped between steps (glibc malloc), so no step pays page faults.

A CPU training step allocates and frees the same large tensors every step (ResNet-20 at batch 256:
16 MiB activations and gradients). PyTorch's CPU allocator is plain malloc. glibc returns the free
top of its heap to the kernel once it exceeds a trim threshold, and that threshold moves with the
largest mmapped block freed so far, so whether the next step must fault its memory back in (and
have the kernel zero it) depends on everything the process allocated before training, and on thread
timing. Measured on the exact CIFAR-10-JPEG ResNet-20 epoch command of bench/data_pipeline.py
--epoch-time-only (minor faults in steps 2-12, loaded machine): the old in-memory code (f6d3e7a)
63,134, this code before this module 124,706 (12,256 in the median step, i.e. three 16 MiB tensors
faulted back in); with the settings below 16,385 and 21,504 in two runs (median step 0: what remains
is the heap still growing to its peak in the first steps). One fault cost about 1.6 us of system time
there (fitted over 35 steps): 11,300 faults per step (this code's mean) against 5,700 (the old code's)
is about 9 ms per step, 1.8 % of the idle machine's 0.51 s step (100 s / 196 steps), which is the gap
the two idle-machine epoch timings showed (+1.9 %, +2.0 %).

`steady_heap()` fixes both thresholds once per process: blocks up to MMAP_THRESHOLD come from the
heap (the dynamic threshold's own ceiling on 64-bit glibc), and up to TRIM_THRESHOLD of free heap
stays mapped for the next step. Memory freed at the end of a step then stays with the process (up to
TRIM_THRESHOLD of it) instead of going back to the kernel, so its RSS no longer drops between peaks,
and the peak itself grows a little: bench/data_pipeline.py's streamed ResNet-20 epoch peaked at 1,337
MiB PSS with these settings and 1,236 MiB with glibc's defaults (0.98 M vs 2.10 M minor faults; one
run each, 2026-12-03; git show 6e83c8b:docs/benchmarks.md). A no-op outside glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the most glibc accepts
TRIM_THRESHOLD = 512 * 2**20

_done: bool | None = None  # None: not tried; True: set; False: not glibc (or refused)


def steady_heap() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True where they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # glibc only (musl has no mallopt thresholds)
    except (OSError, AttributeError):
        return False
    del gnu
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Order matters: setting either turns glibc's dynamic threshold off, so the mmap threshold is set
    # first (left at its 128 KiB start, every tensor above it would be mmapped and faulted every time).
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
