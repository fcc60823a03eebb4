"""The checkpoint format, whole: what `checkpoint-<step>/` holds, how it is written, verified, found and loaded.

A checkpoint folder holds
- `unet/` and `unet_ema/`: the model and its EMA in diffusers' format (safetensors; `UNet2DModel.from_pretrained`
  loads either, so a checkpoint can be sampled), written and read through Accelerate's save/load hooks, and with
  `--ema_snapshot_steps` the power-function EMAs the same way, in `unet_ema_sigma_rel_<s>/`;
- what Accelerate's `save_state` writes besides: `optimizer.bin`, `random_states_<rank>.pkl`, `scaler.pt` (fp16),
  or the shards of DeepSpeed/FSDP; Accelerate reads them back with `torch.load(weights_only=True)`;
- `rank_state_<rank>.pt`: each process's data position and noise generator (tensors, ints and dicts, read with
  `weights_only=True`);
- `checkpoint.json`, written last: the format, the step, the run it belongs to (the settings that define it, see
  `config.RUN_IDENTITY`), the LR schedule and clock, and the size and SHA-256 of every other file.

Nothing is registered with Accelerate as a pickle, and nothing is read with `weights_only=False`, so resuming a
checkpoint someone else made cannot run their code. Every process writes into a hidden temporary folder that the
main process renames to `checkpoint-<step>` once the manifest is on disk: a crash leaves no half checkpoint that
`latest` could pick, and a checkpoint whose files do not match its manifest is skipped with one line saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from .config import IDENTITY_WHEN_SET
from .errors import TrainingError, first_line


logger = logging.getLogger(__name__)

FORMAT = "anime-ddpm-checkpoint/2"
MANIFEST = "checkpoint.json"
UNET_DIR, EMA_DIR = "unet", "unet_ema"
SNAPSHOT_EMA_DIR = "unet_ema_sigma_rel_{sigma_rel:.3f}"
RANK_STATE = "rank_state_{rank}.pt"
PATTERN = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"  # must not start with "checkpoint": `latest` (ours and diffusers') ignores it
OLD_PREFIX = ".old-checkpoint-"
HASH_CHUNK = 1 << 22


class InvalidCheckpoint(Exception):
    """A checkpoint folder that cannot be trusted; the message says why, in a few words."""


# ============================================================================================= identity
def run_id(identity: dict[str, Any]) -> str:
    """A short fingerprint of the settings that define a run (two runs with the same ones are the same run)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'--seed 7 (this run: 0), --train_batch_size 4 (this run: 16)' for the settings that differ."""
    names = sorted(set(saved) | set(current))
    changed = [name for name in names if saved.get(name) != current.get(name)]

    # A name only one side has is, on the other, at the value runs had before it existed (config.IDENTITY_WHEN_SET).
    def value(identity: dict[str, Any], name: str) -> Any:
        return identity.get(name, IDENTITY_WHEN_SET.get(name))

    return ", ".join(f"--{name} {value(saved, name)} (this run: {value(current, name)})" for name in changed)


# ============================================================================================= the folder's checkpoints
def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """`checkpoint-<step>` folders in output_dir as (step, path), oldest first (temporary folders are not listed)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = PATTERN.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a checkpoint folder, or InvalidCheckpoint (missing, unreadable, another format)."""
    manifest_path = Path(path, MANIFEST)
    if not manifest_path.is_file():
        if Path(path, "trainer_state_0.pt").is_file() or Path(path, "model.safetensors").is_file():
            raise InvalidCheckpoint("written by an older anime-ddpm, whose checkpoints cannot be verified")
        raise InvalidCheckpoint(f"it has no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise InvalidCheckpoint(f"its {MANIFEST} is unreadable") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidCheckpoint(f"its {MANIFEST} is not of the format {FORMAT}")
    return manifest


def _sha256(path: Path, sync: bool = False) -> str:
    """The file's SHA-256; `sync` first flushes it to disk (through the same handle)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if sync:
            os.fsync(f.fileno())
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest, once every file it lists is there with its size and checksum; else InvalidCheckpoint."""
    manifest = read_manifest(path)
    for relative, expected in sorted(manifest.get("files", {}).items()):
        file = Path(path, relative)
        if not file.is_file():
            raise InvalidCheckpoint(f"{relative} is missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise InvalidCheckpoint(f"{relative} has {size} bytes instead of {expected['size']} (truncated?)")
        if _sha256(file) != expected["sha256"]:
            raise InvalidCheckpoint(f"{relative} does not match its checksum (corrupt or modified)")
    return manifest


def find_resumable(output_dir: str, spec: str) -> tuple[str, dict[str, Any]] | None:
    """(path, manifest) of the checkpoint to resume: `latest` is the newest that verifies (one warning per one
    skipped); a path or name must verify. None when `latest` finds no checkpoint folder at all."""
    if spec != "latest":
        path = next((c for c in (spec, os.path.join(output_dir, spec)) if os.path.isdir(c)), None)
        if path is None:
            raise TrainingError(f"No checkpoint folder {spec!r} (looked for it as a path and inside {output_dir}).")
        try:
            return path, verify(path)
        except InvalidCheckpoint as reason:
            raise TrainingError(f"Cannot resume from {path}: {reason}.") from None
    checkpoints = list_checkpoints(output_dir)
    problems = []
    for _, path in reversed(checkpoints):
        try:
            return path, verify(path)
        except InvalidCheckpoint as reason:
            logger.warning(f"Skipping {path}: {reason}.")
            problems.append(f"{os.path.basename(path)}: {reason}")
    if checkpoints:
        raise TrainingError(
            f"No checkpoint in {output_dir} can be resumed ({'; '.join(problems)}): start over with "
            "--overwrite_output_dir, or in another --output_dir.",
            exit_code=1,
        )
    return None


def check_belongs(path: str, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse, in one sentence, a checkpoint of another run (other model, data, batch, seed or process count)."""
    if manifest.get("run_id") != run_id(identity):
        raise TrainingError(
            f"{path} belongs to another run: {differences(manifest.get('run', {}), identity)}; resume with those "
            "settings, or start this run in another --output_dir."
        )


def owner_of(path: str) -> str | None:
    """The run id a checkpoint's manifest names; None when it has no readable manifest."""
    try:
        return read_manifest(path).get("run_id")
    except InvalidCheckpoint:
        return None


def owned_checkpoints(output_dir: str, owner: str) -> list[tuple[int, str]]:
    """The checkpoints whose manifest names the run `owner`, oldest first (unreadable ones are nobody's)."""
    return [(step, path) for step, path in list_checkpoints(output_dir) if owner_of(path) == owner]


def other_runs_checkpoints(output_dir: str, owner: str) -> list[str]:
    """Checkpoints whose manifest names another run than `owner` (unreadable ones are not counted)."""
    return [path for _, path in list_checkpoints(output_dir) if owner_of(path) not in (owner, None)]


def remove_incomplete(output_dir: str) -> None:
    """Temporary folders left by a run killed while writing a checkpoint."""
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith((TMP_PREFIX, OLD_PREFIX)):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


# ============================================================================================= writing and reading
def write_manifest(folder: str, step: int, identity: dict[str, Any], num_processes: int,
                   shared: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """checkpoint.json for the complete `folder`: the run, the shared state, and every file's size and checksum
    (each file synced to disk first, so that the manifest never describes data still in the page cache)."""
    files = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digest = _sha256(path, sync=True)
            files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": digest}
    manifest = {"format": FORMAT, "step": step, "num_processes": num_processes, "run_id": run_id(identity),
                "run": identity, "time": time.time(), **shared, "files": files}  # fmt: skip
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    return manifest


@dataclass
class Checkpointer:
    """Writes and reads this run's checkpoints; `register` once, before the first save or load.

    Accelerate's save_state and load_state must run on every process (DeepSpeed and FSDP write one shard per rank);
    output_dir must be on a file system all processes share.
    """

    accelerator: Accelerator
    output_dir: str
    identity: dict[str, Any]
    total_limit: int | None = None
    before_publish: Callable[[str, int], None] | None = None  # tests: called with the complete temporary folder

    @property
    def run_id(self) -> str:
        return run_id(self.identity)

    def register(self, emas: dict[str, EMAModel], unet_config: dict[str, Any]) -> None:
        """The model goes to `unet/` and each EMA to its folder (`unet_ema/`, `unet_ema_sigma_rel_<s>/`), all plain
        diffusers UNets, through Accelerate's hooks (the EMAs' counters travel in the manifest, with the rest of the
        shared state)."""
        accelerator = self.accelerator

        def save_hook(models: list, weights: list, folder: str) -> None:
            if not accelerator.is_main_process:
                return
            for subfolder, ema in emas.items():
                ema_unet = UNet2DModel.from_config(unet_config)
                ema.copy_to(ema_unet.parameters())
                ema_unet.save_pretrained(os.path.join(folder, subfolder))
            if weights:  # DeepSpeed and FSDP save the model themselves and pass no weights
                for model in models:
                    accelerator.unwrap_model(model).save_pretrained(os.path.join(folder, UNET_DIR))
                    weights.pop()

        def load_hook(models: list, folder: str) -> None:
            for subfolder, ema in emas.items():
                if not os.path.isdir(os.path.join(folder, subfolder)):  # the power EMAs must start with the run
                    raise TrainingError(f"it was written without the EMA that {subfolder}/ would hold: resume it without --ema_snapshot_steps, or start a new run with it.")  # fmt: skip
                saved = UNet2DModel.from_pretrained(folder, subfolder=subfolder)
                ema.load_state_dict({"shadow_params": [p.detach().to(accelerator.device) for p in saved.parameters()]})
            while models:  # DeepSpeed and FSDP load the model themselves and pass no models
                model = accelerator.unwrap_model(models.pop())
                saved = UNet2DModel.from_pretrained(folder, subfolder=UNET_DIR)
                model.load_state_dict(saved.state_dict())

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    def save(self, step: int, shared: dict[str, Any], per_rank: dict[str, Any]) -> str:
        """Write checkpoint-<step>: `shared` (JSON, main process) and `per_rank` (this process's tensors/ints)."""
        accelerator, output_dir = self.accelerator, self.output_dir
        final = os.path.join(output_dir, f"checkpoint-{step}")
        tmp = os.path.join(output_dir, f"{TMP_PREFIX}{step}")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        torch.save(per_rank, os.path.join(tmp, RANK_STATE.format(rank=accelerator.process_index)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if self.before_publish is not None:
                self.before_publish(tmp, step)
            self._publish(tmp, final, step, shared)
        accelerator.wait_for_everyone()
        return final

    def _publish(self, tmp: str, final: str, step: int, shared: dict[str, Any]) -> None:
        write_manifest(tmp, step, self.identity, self.accelerator.num_processes, shared)
        if os.path.exists(final):  # re-saving a step after a resume from an earlier checkpoint
            owner = owner_of(final)
            if owner not in (self.run_id, None):
                raise TrainingError(f"{final} belongs to another run, which writes to {self.output_dir} too.", exit_code=1)  # fmt: skip
            if owner is None:  # not verifiably anyone's (an older format, a damaged manifest): keep it, aside
                aside = f"{final}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(final, aside)
                logger.warning(f"Moved the unverifiable {final} to {aside} to write this run's checkpoint there.")
            else:
                old = os.path.join(self.output_dir, f"{OLD_PREFIX}{step}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
                tmp = None
        if tmp is not None:
            os.replace(tmp, final)  # atomic: `latest` sees the whole checkpoint or none of it
        self.rotate()

    def rotate(self) -> list[str]:
        """Delete this run's oldest checkpoints beyond total_limit; another run's are never touched."""
        if self.total_limit is None:
            return []
        owned = owned_checkpoints(self.output_dir, self.run_id)
        doomed = [path for _, path in owned[: max(0, len(owned) - self.total_limit)]]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
            logger.info(f"Removed old checkpoint {path} (--checkpoints_total_limit {self.total_limit})")
        return doomed

    def load(self, path: str, manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the model, EMA, optimiser and RNGs from a verified checkpoint of this run; returns
        (shared state, this process's state)."""
        rank_file = os.path.join(path, RANK_STATE.format(rank=self.accelerator.process_index))
        random_states = os.path.join(path, f"random_states_{self.accelerator.process_index}.pkl")
        try:
            per_rank = torch.load(rank_file, map_location="cpu", weights_only=True)
            # Accelerate skips RNG states it cannot read without a word: read them first, as it does.
            accelerate_load(random_states)
            self.accelerator.load_state(path)
        except FileNotFoundError as error:
            raise TrainingError(f"Cannot resume from {path}: {os.path.basename(error.filename)} is missing.") from None
        except pickle.UnpicklingError:  # weights_only refuses anything but plain data: code, or foreign objects
            raise TrainingError(f"Cannot resume from {path}: it holds objects that are not plain data (tensors, numbers, lists, dicts), which are never loaded.") from None  # fmt: skip
        except Exception as error:  # a file that verifies but does not fit this run (hand-edited, say)
            raise TrainingError(f"Cannot resume from {path}: {first_line(error)}") from None
        return manifest, per_rank
