"""Power-function EMAs and post-hoc EMA reconstruction (Karras et al. 2024): the math and the snapshot files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from anime_ddpm import ema_snapshots, rundir
from anime_ddpm.config import TrainingConfig
from anime_ddpm.posthoc_ema import (
    MAX_SIGMA_REL,
    PowerFunctionEMA,
    gamma_from_sigma_rel,
    posthoc_weights,
    sigma_rel_from_gamma,
)
from anime_ddpm.state import build_ema


def test_sigma_rel_names_the_exponent_as_in_the_paper():
    # Karras et al. 2024, section 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.01, 0.05, 0.15, MAX_SIGMA_REL):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(sigma_rel)) == pytest.approx(sigma_rel)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ValueError, match="sigma_rel must be in"):
            gamma_from_sigma_rel(bad)


def test_a_power_function_ema_weights_each_step_by_the_power_density():
    """After T steps, the weights of step t count (t^(g+1) - (t-1)^(g+1)) / T^(g+1): parameters that are the unit
    vector of their step make the EMA that weight vector."""
    steps = 50
    parameter = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64))
    ema = PowerFunctionEMA([parameter], sigma_rel=0.10, foreach=False)
    for t in range(1, steps + 1):
        with torch.no_grad():
            parameter.zero_()
            parameter[t - 1] = 1.0
        ema.step([parameter])
    t = np.arange(1, steps + 1, dtype=np.float64)
    exponent = ema.gamma + 1
    expected = (t**exponent - (t - 1) ** exponent) / steps**exponent
    np.testing.assert_allclose(ema.shadow_params[0].numpy(), expected, rtol=1e-9, atol=1e-15)


def test_the_runs_ema_is_a_power_function_ema_of_ema_sigma_rel_by_default():
    """--use_ema keeps a power-function EMA of --ema_sigma_rel (0.15 by default), whose length stays that fraction
    of the run; --ema_sigma_rel 0 keeps diffusers' warm-up EMA, 1 - decay = (1 + t) ** -0.75 (older runs' EMA)."""
    steps = 40
    module = torch.nn.Linear(steps, 1, bias=False).double()
    ema = build_ema(TrainingConfig(), module, foreach=False)
    assert isinstance(ema, PowerFunctionEMA) and ema.sigma_rel == 0.15
    for t in range(1, steps + 1):
        with torch.no_grad():
            module.weight.zero_()
            module.weight[0, t - 1] = 1.0
        ema.step(module.parameters())
    t = np.arange(1, steps + 1, dtype=np.float64)
    exponent = gamma_from_sigma_rel(0.15) + 1
    np.testing.assert_allclose(ema.shadow_params[0][0].numpy(), (t**exponent - (t - 1) ** exponent) / steps**exponent)
    warmup = build_ema(TrainingConfig(ema_sigma_rel=0), module)
    assert not isinstance(warmup, PowerFunctionEMA)
    assert warmup.get_decay(101) == pytest.approx(1 - 101**-0.75)  # diffusers' t: 0 at the first step
    assert build_ema(TrainingConfig(use_ema=False), module) is None


def drifting_run(steps: int = 2000, every: int = 50, sigma_rels=(0.03, 0.05, 0.08, 0.10, 0.20)):
    """Noisy weights around a random walk, power EMAs of several lengths, snapshots of the 0.05 and 0.10 ones."""
    torch.manual_seed(0)
    parameter = torch.nn.Parameter(torch.zeros(64))
    emas = {sigma_rel: PowerFunctionEMA([parameter], sigma_rel) for sigma_rel in sigma_rels}
    walk, snapshots = torch.zeros(64), []
    for step in range(1, steps + 1):
        walk += 0.1 * torch.randn(64)
        with torch.no_grad():
            parameter.copy_(walk + torch.randn(64))
        for ema in emas.values():
            ema.step([parameter])
        if step % every == 0:
            snapshots += [(step, s, emas[s].shadow_params[0].clone()) for s in (0.05, 0.10)]
    return emas, snapshots


def test_the_reconstruction_matches_an_ema_tracked_through_the_run():
    emas, snapshots = drifting_run()
    steps, sigma_rels, tensors = zip(*snapshots, strict=True)
    spread = (emas[0.05].shadow_params[0] - emas[0.10].shadow_params[0]).norm()
    for target in (0.03, 0.08, 0.20):
        weights = posthoc_weights(steps, sigma_rels, target, 2000)
        rebuilt = sum(float(w) * tensor for w, tensor in zip(weights, tensors, strict=True))
        assert (rebuilt - emas[target].shadow_params[0]).norm() < 0.01 * spread, target
        assert weights.sum() == pytest.approx(1.0, abs=1e-3)
    own = posthoc_weights(steps, sigma_rels, 0.05, 2000)  # a snapshot's own EMA is that snapshot
    np.testing.assert_allclose(own, np.eye(len(own))[-2], atol=1e-6)


def test_snapshots_after_the_target_step_are_refused():
    with pytest.raises(ValueError, match="steps 1..100"):
        posthoc_weights([50, 150], [0.05, 0.10], 0.08, 100)


# ============================================================================================= files
def write_run(folder, run_id="run-a", steps=(100, 200, 300), scale=1.0):
    for step in steps:
        for sigma_rel in (0.05, 0.10):
            tensors = {"w": torch.full((3,), scale * step + sigma_rel), "b": torch.tensor([float(step)])}
            ema_snapshots.write(str(folder), step, sigma_rel, run_id, tensors)


def test_snapshots_are_written_whole_and_found_by_step(tmp_path):
    write_run(tmp_path)
    found = ema_snapshots.find(str(tmp_path))
    assert [(s.step, s.sigma_rel, s.run_id) for s in found][:3] == [(100, 0.05, "run-a"), (100, 0.10, "run-a"), (200, 0.05, "run-a")]  # fmt: skip
    assert not list((tmp_path / ema_snapshots.SNAPSHOT_DIR).glob("*.tmp"))
    state_dict, step = ema_snapshots.reconstruct(found, 0.05)
    assert step == 300
    torch.testing.assert_close(state_dict["w"], torch.full((3,), 300.05))
    state_dict, step = ema_snapshots.reconstruct(found, 0.10, step=200)  # an earlier step: later snapshots unused
    torch.testing.assert_close(state_dict["w"], torch.full((3,), 200.10))
    assert state_dict["w"].dtype == torch.float32


def test_a_foreign_or_damaged_file_is_skipped_with_a_warning(tmp_path, caplog):
    write_run(tmp_path, steps=(100,))
    folder = tmp_path / ema_snapshots.SNAPSHOT_DIR
    (folder / "cut.safetensors").write_bytes(b"\x10\x00")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(folder / "foreign.safetensors"))
    with caplog.at_level(logging.WARNING):
        found = ema_snapshots.find(str(tmp_path))
    assert len(found) == 2 and "cut.safetensors" in caplog.text and "not an anime-ddpm EMA snapshot" in caplog.text


@pytest.mark.parametrize(
    "setup,kwargs,match",
    [
        (lambda f: (write_run(f), write_run(f, "run-b", steps=(400,))), {}, "belong to 2 runs"),
        (lambda f: write_run(f), {"step": 250}, "no snapshot at step 250; the snapshots are at steps 100 to 300"),
    ],
)
def test_mixed_runs_and_steps_between_snapshots_are_refused(tmp_path, setup, kwargs, match):
    setup(tmp_path)
    with pytest.raises(ValueError, match=match):
        ema_snapshots.reconstruct(ema_snapshots.find(str(tmp_path)), 0.08, **kwargs)


def test_a_resume_drops_only_its_own_later_snapshots(tmp_path):
    write_run(tmp_path, "run-a")
    write_run(tmp_path, "run-b", steps=(300, 400))
    half_written = tmp_path / ema_snapshots.SNAPSHOT_DIR / "step-00000500-sigma_rel-0.050-run-run-a.safetensors.tmp"
    half_written.write_bytes(b"\x00" * 10)
    assert ema_snapshots.drop_after(str(tmp_path), 200, "run-a") == 2
    assert not half_written.exists()
    left = {(s.run_id, s.step) for s in ema_snapshots.find(str(tmp_path))}
    assert left == {("run-a", 100), ("run-a", 200), ("run-b", 300), ("run-b", 400)}


def test_a_new_run_refuses_a_folder_that_holds_snapshots(tmp_path):
    write_run(tmp_path, steps=(100,))
    assert rundir.previous_run(str(tmp_path)) == "EMA snapshots"
    with rundir.RunDirectory(str(tmp_path), overwrite=True):
        pass
    assert not (tmp_path / ema_snapshots.SNAPSHOT_DIR).exists()
