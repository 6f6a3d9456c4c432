"""A second thread of torch work on the CPU, with the caller's intra-op thread count.

One OpenMP team keeps the cores busy inside a large convolution, but much of a CT's work is not that: the nodule
detector's candidates are NumPy and SciPy (a lung mask, Laplacians of Gaussians, local maxima), most of it on one
core, and small operations leave the team waiting. :func:`torch_side_thread` gives one more thread in which
such work (the detector) runs beside the 2D model's batches in the caller (``inference.slices``). It runs torch
with the caller's number of intra-op threads, because a float32 convolution's result can depend on that number
(oneDNN splits the work by it): so every operation computes what it computes in one thread, to the bit
(``tests/inference/test_workers.py``). Why: docs/decisions/0031.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


def side_thread_useful(device: torch.device, loaded: object) -> bool:
    """Whether a CT's torch work may go to a side thread: on the CPU, for torch networks, with more than one
    intra-op thread (one thread has no second core to use); not on a GPU or for a network run by another
    runtime (``LoadedModel.runtime``, e.g. onnxruntime, which has threads of its own)."""
    if device.type != "cpu" or getattr(loaded, "runtime", "torch") != "torch":
        return False
    return torch.get_num_threads() > 1


@contextmanager
def torch_side_thread() -> Iterator[ThreadPoolExecutor]:
    """One thread that runs torch with the caller's intra-op thread count; work submitted runs in order.

    On leaving, it waits for what was submitted (after an error, what has not started is cancelled).
    """
    threads = torch.get_num_threads()

    def same_threads() -> None:
        torch.get_num_threads()  # torch sets a thread's count at its first use: before ours, not after
        torch.set_num_threads(threads)

    pool = ThreadPoolExecutor(1, thread_name_prefix="lt-torch", initializer=same_threads)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
