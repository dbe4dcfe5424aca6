"""Run a function on two CPU ranks (gloo) in spawned processes, with a time limit.

A hang is a test failure, not a stuck CI job: every wait has a timeout and workers
still alive at the end are killed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[[int], Any], rank: int, world_size: int, port: int, queue: Any) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        queue.put((rank, fn(rank)))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[[int], Any], world_size: int = 2, timeout: float = 120.0) -> dict[int, Any]:
    """``{rank: fn(rank)}`` from ``world_size`` gloo processes; ``fn`` must be a module-level function.

    Results cross process boundaries through a queue: return plain Python or numpy values.
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_entry, args=(fn, rank, world_size, port, queue)) for rank in range(world_size)]
    for worker in workers:
        worker.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            rank, value = queue.get(timeout=timeout)
            results[rank] = value
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    exit_codes = [worker.exitcode for worker in workers]
    assert all(code == 0 for code in exit_codes), f"worker exit codes {exit_codes}"
    return results
