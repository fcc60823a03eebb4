"""Power-function EMA snapshots on disk: what `--ema_snapshot_steps` writes, and what `anime-ddpm posthoc-ema` reads.

`output_dir/ema_snapshots/step-<step>-sigma_rel-<s>-run-<run id>.safetensors` holds the weights of one power-function EMA at one
step (safetensors: reading a snapshot cannot run code), with the step, sigma_rel and run id in its metadata. Each is
written to a temporary name and renamed, so a killed run leaves whole snapshots only; a resumed run first deletes its
own snapshots from after the checkpoint it resumes, which it is about to write again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .posthoc_ema import posthoc_weights


logger = logging.getLogger(__name__)

SNAPSHOT_DIR = "ema_snapshots"
FORMAT = "anime-ddpm-ema-snapshot/1"


@dataclass(frozen=True)
class Snapshot:
    path: str
    step: int
    sigma_rel: float
    run_id: str


def snapshot_path(output_dir: str, step: int, sigma_rel: float, run_id: str) -> str:
    """The run id is in the name too, so that no run can overwrite another's snapshot."""
    name = f"step-{step:08d}-sigma_rel-{sigma_rel:.3f}-run-{run_id}.safetensors"
    return os.path.join(output_dir, SNAPSHOT_DIR, name)


def write(output_dir: str, step: int, sigma_rel: float, run_id: str, tensors: Mapping[str, torch.Tensor]) -> str:
    path = snapshot_path(output_dir, step, sigma_rel, run_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in tensors.items()}
    metadata = {"format": FORMAT, "step": str(step), "sigma_rel": repr(sigma_rel), "run_id": run_id}
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def find(output_dir: str) -> list[Snapshot]:
    """The snapshots in output_dir, by step; files that are not ours (or are damaged) are skipped with a warning."""
    folder = os.path.join(output_dir, SNAPSHOT_DIR)
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt") as handle:
                meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError("not an anime-ddpm EMA snapshot")
            found.append(Snapshot(path, int(meta["step"]), float(meta["sigma_rel"]), meta["run_id"]))
        except Exception as error:  # a foreign or truncated file: never fatal, never used
            logger.warning(f"Skipped {path}: {error}")
    return sorted(found, key=lambda snapshot: (snapshot.step, snapshot.sigma_rel))


def drop_after(output_dir: str, step: int, run_id: str) -> int:
    """Delete this run's snapshots from after `step` (a resume writes them again) and the half-written files of a
    killed write; another run's snapshots are never touched. Returns how many snapshots went."""
    doomed = [s for s in find(output_dir) if s.run_id == run_id and s.step > step]
    for snapshot in doomed:
        os.remove(snapshot.path)
    folder = os.path.join(output_dir, SNAPSHOT_DIR)
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.endswith(".safetensors.tmp"):  # the folder is locked to this run: nobody else is writing it
            os.remove(os.path.join(folder, name))
    return len(doomed)


def reconstruct(
    snapshots: Sequence[Snapshot], sigma_rel: float, step: int | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The weights of the power-function EMA of `sigma_rel` at `step` (default: the last snapshot's), from snapshots
    of one run. Returns (state dict, step)."""
    runs = sorted({snapshot.run_id for snapshot in snapshots})
    if len(runs) != 1:
        raise ValueError(f"the snapshots belong to {len(runs)} runs ({', '.join(runs) or 'none'}); keep one run's")
    steps = sorted({snapshot.step for snapshot in snapshots})
    step = steps[-1] if step is None else step
    if step not in steps:  # between or after snapshots the weights are unknown
        raise ValueError(f"there is no snapshot at step {step}; the snapshots are at steps {steps[0]} to {steps[-1]}")
    used = [snapshot for snapshot in snapshots if snapshot.step <= step]
    if len({snapshot.sigma_rel for snapshot in used}) < 2:
        raise ValueError(f"no snapshots of two EMA lengths up to step {step}")
    weights = posthoc_weights([s.step for s in used], [s.sigma_rel for s in used], sigma_rel, step)
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for snapshot, weight in zip(used, weights, strict=True):  # one snapshot in memory at a time
        for name, tensor in load_file(snapshot.path).items():
            dtypes.setdefault(name, tensor.dtype)
            total.setdefault(name, torch.zeros_like(tensor, dtype=torch.float64))
            total[name] += float(weight) * tensor.to(torch.float64)  # the weights are large and of both signs
    return {name: tensor.to(dtypes[name]) for name, tensor in total.items()}, step
