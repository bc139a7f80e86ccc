"""Keep freed memory for reuse in the commands that allocate image-sized tensors at every step.

glibc hands out every allocation above its mmap threshold (dynamic, at most 32 MB) as fresh
pages from the kernel and gives them back on ``free``. ``featviz optimize`` on 64 images of
224 px allocates and frees about a dozen tensors of 38.5 MB at every step (the spectrum, the
images, the transforms' and the network's activations, their gradients), so the kernel maps,
zero-fills page by page and unmaps about 1.4 GB per step: 346,000 minor page faults and 0.98 s
of a 3.3 s step spent in the kernel (AlexNet ``features.3``, one thread, 2026-12-03). Raising
glibc's mmap and trim thresholds to 1 GiB lets freed blocks be reused instead: 49,000 faults,
0.12 s in the kernel, and the step and its floor (a bare forward and backward) 24-28 % faster
(docs/optimize.md, "Speed"). The price is that the process keeps its peak heap until it exits,
which a command that ends after its run can pay; a notebook can set the same through glibc's
environment variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) before starting.

A process setting, so the CLI (which owns the process) makes it, never the library.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BELOW = 1 << 30  # 1 GiB: above every per-step tensor of a layer-sized batch
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks below 1 GiB instead of returning them to the kernel.
    True when set; False on another C library or platform, or when the user already chose the
    thresholds through glibc's environment variables (theirs are kept)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
