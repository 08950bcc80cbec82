"""Gather large per-sample states to rank 0 only, and share what rank 0 computes from them.

torchmetrics syncs a ``"cat"`` list state by all-gathering it to *every* rank, after cloning it (its unsync
cache), concatenating it and padding it to the longest rank: with exact pixel metrics (every map kept) each
rank peaks at ~5x its own maps (``benchmarks/results/ddp_memory.md``). Exact pixel metrics need all maps in ONE
place only, so here non-zero ranks send their (CPU) states to rank 0 point to point, in chunks, straight into
one preallocated CPU buffer there; rank 0 computes, and :func:`root_result` broadcasts the (small) result so
every rank returns the same table. Hand-written because neither torch (``gather`` needs equal sizes and the
backend's device) nor torchmetrics offers a gather-to-one for uneven states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_to_root", "root_result"]

T = TypeVar("T")

#: Elements per message (64 MiB of float32): bounds the transfer buffer on a GPU backend.
CHUNK_ELEMENTS = 2**24


def _global_rank(group: Any, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _transfer_device(group: Any) -> torch.device:
    """CPU for gloo (or a CPU+GPU backend pair); the current GPU for NCCL alone, which sends CUDA tensors only."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _chunks(rows: int, row_elements: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _message_chunks(parts: Sequence[Tensor], tail: tuple[int, ...], row_elements: int):
    """The parts' rows cut at the receiver's chunk boundaries (``_chunks`` of the total): message sizes match."""
    rows = [t.reshape(-1, *tail) for t in parts]
    total = sum(int(t.shape[0]) for t in rows)
    position, row_start = 0, 0  # the part being read, and the global row where it starts
    for start, stop in _chunks(total, row_elements):
        pieces = []
        while start < stop:
            part = rows[position]
            take = min(stop, row_start + part.shape[0]) - start
            pieces.append(part[start - row_start : start - row_start + take])
            start += take
            if start == row_start + part.shape[0]:
                position, row_start = position + 1, start
        yield pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces)


def gather_to_root(parts_by_state: dict[str, Sequence[Tensor]], specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                   group: Any = None) -> dict[str, Tensor | None]:
    """Concatenate each state's parts of every rank, in rank order, on rank 0 (CPU); None on the other ranks.

    ``parts_by_state``: state name -> this rank's tensors (N_i, *tail); ``specs``: name -> (dtype, tail). A
    collective: every rank of ``group`` must call it with the same names.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    device = _transfer_device(group)
    names = list(specs)
    parts = {name: [t for t in parts_by_state[name] if t.numel()] for name in names}
    local = torch.tensor([sum(int(t.shape[0]) for t in parts[name]) for name in names], dtype=torch.int64,
                         device=device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    rows = torch.stack(sizes).cpu()  # (world, names)
    out: dict[str, Tensor | None] = {}
    for k, name in enumerate(names):
        dtype, tail = specs[name]
        row_elements = int(torch.tensor(tail).prod()) if tail else 1
        if rank != 0:
            for chunk in _message_chunks(parts[name], tail, row_elements):
                dist.send(chunk.to(device=device, dtype=dtype), dst=_global_rank(group, 0), group=group)
            out[name] = None
            continue
        full = torch.empty((int(rows[:, k].sum()), *tail), dtype=dtype)
        offset = 0
        for tensor in parts[name]:
            full[offset : offset + tensor.shape[0]] = tensor.reshape(-1, *tail).cpu()
            offset += tensor.shape[0]
        for source in range(1, world):
            for start, stop in _chunks(int(rows[source, k]), row_elements):
                target = full[offset + start : offset + stop]
                if device.type == "cpu":
                    dist.recv(target, src=_global_rank(group, source), group=group)  # in place: a contiguous view
                else:
                    buffer = torch.empty(target.shape, dtype=dtype, device=device)
                    dist.recv(buffer, src=_global_rank(group, source), group=group)
                    target.copy_(buffer)
            offset += int(rows[source, k])
        out[name] = full
    return out


def root_result(fn: Callable[[], T], group: Any = None) -> T:
    """``fn()`` run on rank 0 only, its result (or its exception) broadcast: every rank returns or raises the same.

    A collective: every rank of ``group`` must call it.
    """
    message: list[Any] = [None]
    if dist.get_rank(group) == 0:
        try:
            message = [("value", fn())]
        except Exception as error:  # noqa: BLE001 — re-raised on every rank, so none waits forever
            message = [("error", error)]
    dist.broadcast_object_list(message, src=_global_rank(group, 0), group=group)
    kind, value = message[0]
    if kind == "error":
        raise value
    return value
