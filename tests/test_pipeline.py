import ast
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, PNDMScheduler, UNet2DModel

from anime_ddpm import AnimeDDPMPipeline, DenoisingRecorder, build_unet, scheduler_from
from anime_ddpm import pipeline as pipeline_module
from anime_ddpm.pipeline import display_scale, evenly_spaced_steps
from anime_ddpm.schedulers import SCHEDULERS

from .oracle import GaussianOracleUNet


def tiny_pipeline(learned_variance=False, seed=0, resolution=8, **scheduler_kwargs):
    torch.manual_seed(seed)
    unet = build_unet("tiny", resolution, learned_variance=learned_variance).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, **scheduler_kwargs)
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_matches_diffusers_ddpm_pipeline():
    pipe = tiny_pipeline()
    reference = DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    reference.set_progress_bar_config(disable=True)
    ours = pipe(batch_size=2, num_inference_steps=20, generator=torch.Generator().manual_seed(3), output_type="np")
    theirs = reference(
        batch_size=2, num_inference_steps=20, generator=torch.Generator().manual_seed(3), output_type="np"
    )
    np.testing.assert_allclose(ours.images, theirs.images, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs(name):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_from(name, pipe.scheduler)
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (2, 8, 8, 3)
    assert np.isfinite(images.images).all()


def test_a_scheduler_subclass_that_forwards_kwargs_still_gets_the_generator():
    """A subclass with step(*args, **kwargs) (e.g. a researcher's tweak of DDPM's step) samples the same seeded images
    as its base: the generator reaches the base's step, not the global RNG; PNDM's wrapper gets no generator."""

    class Forwarding(DDPMScheduler):
        def step(self, model_output, timestep, sample, *args, **kwargs):
            return super().step(model_output, timestep, sample, *args, **kwargs)

    class ForwardingPNDM(PNDMScheduler):
        def step(self, *args, **kwargs):
            return super().step(*args, **kwargs)

    pipe = tiny_pipeline()
    kwargs = dict(batch_size=2, num_inference_steps=10, output_type="np")
    expected = pipe(generator=torch.Generator().manual_seed(5), **kwargs).images
    pipe.scheduler = Forwarding.from_config(pipe.scheduler.config)
    torch.manual_seed(123)  # the global RNG must not matter
    np.testing.assert_array_equal(pipe(generator=torch.Generator().manual_seed(5), **kwargs).images, expected)
    pipe.scheduler = ForwardingPNDM.from_config(pipe.scheduler.config)
    assert np.isfinite(pipe(generator=torch.Generator().manual_seed(5), **kwargs).images).all()


def test_pndm_runs():
    """diffusers' DDPMPipeline passes `generator` to PNDM's step and crashes; we only pass what step accepts."""
    pipe = tiny_pipeline()
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    out = pipe(num_inference_steps=10, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.isfinite(out).all()


ORACLE_MEAN = (-0.3, 0.0, 0.3)
ORACLE_STD = (0.6, 0.5, 0.7)


def oracle_pipeline(name, prediction_type="epsilon"):
    # clip_sample=False: clipping x0 to [-1, 1] is right for images but would narrow this Gaussian's tails.
    base = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=prediction_type)
    scheduler = scheduler_from(name, base)
    oracle = GaussianOracleUNet(
        ORACLE_MEAN, ORACLE_STD, base.alphas_cumprod.numpy(), sample_size=16, scheduler=scheduler,
        prediction_type=prediction_type,
    )  # fmt: skip
    pipe = AnimeDDPMPipeline(unet=oracle, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_sample(pipe, steps, **kwargs):
    """The last x_0 before clamping to the image range, in [-1, 1] units."""
    recorder = DenoisingRecorder(steps=[-1])
    pipe(
        batch_size=64,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=recorder,
        **kwargs,
    )
    return recorder.latents[-1].double()


@pytest.mark.parametrize(
    "name,steps,rtol",
    [
        ("ddpm", 1000, 0.03),
        ("ddim", 50, 0.07),  # first-order ODE steps lose a little variance at 50 steps
        ("dpm++", 25, 0.03),
        ("euler", 50, 0.07),
        ("euler-a", 500, 0.03),
        ("heun", 25, 0.03),
        ("unipc", 25, 0.03),
    ],
)
def test_sampler_reaches_the_data_distribution(name, steps, rtol):
    """With the exact noise predictor for Gaussian data, samples must have the data's mean and std per channel."""
    x = final_sample(oracle_pipeline(name), steps)
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), ORACLE_MEAN, atol=0.02)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), ORACLE_STD, rtol=rtol)


@pytest.mark.parametrize("name,steps,rtol", [("euler-a", 500, 0.03), ("dpm++", 25, 0.03), ("heun", 25, 0.03)])
def test_x0_models_reach_the_data_distribution_with_every_sampler(name, steps, rtol):
    """An x_0 ("sample") model, our default, also with Euler ancestral, whose step takes only epsilon or v: the
    pipeline converts x_0 to epsilon for it and leaves the scheduler's config as it was."""
    pipe = oracle_pipeline(name, prediction_type="sample")
    x = final_sample(pipe, steps)
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), ORACLE_MEAN, atol=0.02)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), ORACLE_STD, rtol=rtol)
    assert pipe.scheduler.config.prediction_type == "sample"


def test_ddim_eta_one_is_stochastic_and_still_correct():
    pipe = oracle_pipeline("ddim")
    x = final_sample(pipe, 250, eta=1.0)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), ORACLE_STD, rtol=0.04)
    assert not torch.allclose(x, final_sample(pipe, 250, eta=0.0))


def test_diffusers_ddpm_pipeline_is_wrong_with_euler():
    """The bug we fix: without init_noise_sigma and scale_model_input, Euler sampling misses the data."""
    pipe = oracle_pipeline("euler")
    reference = DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)
    reference.set_progress_bar_config(disable=True)
    x = reference(batch_size=16, num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="np")
    std = (np.asarray(x.images) * 2 - 1).std(axis=(0, 1, 2))
    assert not np.allclose(std, ORACLE_STD, rtol=0.2)


def test_same_generator_same_images_and_batch_equals_one_by_one():
    pipe = tiny_pipeline()
    kwargs = dict(num_inference_steps=10, output_type="np")
    a = pipe(batch_size=3, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], **kwargs).images
    b = pipe(batch_size=3, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], **kwargs).images
    np.testing.assert_array_equal(a, b)
    singles = np.concatenate(
        [pipe(batch_size=1, generator=torch.Generator().manual_seed(s), **kwargs).images for s in (1, 2, 3)]
    )
    np.testing.assert_allclose(a, singles, atol=1e-5)


def test_output_types_and_return_dict():
    pipe = tiny_pipeline()
    gen = torch.Generator().manual_seed(0)
    pil = pipe(batch_size=2, num_inference_steps=2, generator=gen).images
    assert len(pil) == 2 and pil[0].size == (8, 8) and pil[0].mode == "RGB"
    pt = pipe(num_inference_steps=2, output_type="pt").images
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 3, 8, 8) and 0 <= pt.min() and pt.max() <= 1
    (images,) = pipe(num_inference_steps=2, output_type="np", return_dict=False)
    assert images.shape == (1, 8, 8, 3)


def test_save_and_load_round_trip(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path)
    loaded = AnimeDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=2, num_inference_steps=5, output_type="np")
    a = pipe(generator=torch.Generator().manual_seed(7), **kwargs).images
    b = loaded(generator=torch.Generator().manual_seed(7), **kwargs).images
    np.testing.assert_array_equal(a, b)
    # A plain DDPMPipeline (diffusers only) loads the same folder, with the same weights.
    plain = DDPMPipeline.from_pretrained(tmp_path)
    plain.set_progress_bar_config(disable=True)
    c = plain(generator=torch.Generator().manual_seed(7), **kwargs).images
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_learned_variance_unet():
    pipe = tiny_pipeline(learned_variance=True, variance_type="learned_range")
    assert pipe.unet.config.out_channels == 6
    gen = torch.Generator().manual_seed(0)
    out = pipe(batch_size=2, num_inference_steps=10, generator=gen, output_type="np").images
    assert out.shape == (2, 8, 8, 3) and np.isfinite(out).all()
    # Another scheduler gets the mean channels only.
    pipe.scheduler = scheduler_from("ddim", pipe.scheduler)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    out = pipe(batch_size=2, num_inference_steps=10, generator=gen, output_type="np").images
    assert out.shape == (2, 8, 8, 3) and np.isfinite(out).all()


def test_learned_variance_changes_ddpm_samples():
    """The variance channels must reach DDPMScheduler: moving them changes the samples."""
    pipe = tiny_pipeline(learned_variance=True, variance_type="learned_range")
    a = pipe(num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="np").images
    with torch.no_grad():
        out = pipe.unet.conv_out
        out.bias[3:] += 2.0  # v -> larger: interpolation moves towards beta_t
    b = pipe(num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("name", ["ddpm", "dpm++"])
def test_recorder_keeps_xt_and_predicted_x0(name):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_from(name, pipe.scheduler)
    recorder = DenoisingRecorder(num_snapshots=4)
    pipe(batch_size=2, num_inference_steps=10, callback_on_step_end=recorder, output_type="np")
    assert recorder.steps == [0, 3, 6, 9]
    assert len(recorder.latents) == len(recorder.pred_original_samples) == 4
    assert recorder.latents[0].shape == recorder.pred_original_samples[0].shape == (2, 3, 8, 8)


@pytest.mark.parametrize("name", ["ddpm", "dpm++", "euler"])
def test_a_self_conditioned_unet_sees_the_previous_steps_clipped_x0(name):
    """Chen et al. 2022, algorithm 4: zeros at the first step, then the x_0 the previous step predicted, with every
    scheduler (DPM-Solver's step does not report x_0: the pipeline computes it)."""
    torch.manual_seed(0)
    unet = build_unet("tiny", 8, self_condition=True).eval()
    assert unet.config.in_channels == 6 and unet.config.self_condition
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.scheduler = scheduler_from(name, pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    extra = []  # the second half of every UNet input: the self-conditioning channels
    unet.register_forward_pre_hook(lambda module, args: extra.append(args[0][:, 3:].clone()))
    recorder = DenoisingRecorder(num_snapshots=0)
    images = pipe(batch_size=2, num_inference_steps=5, callback_on_step_end=recorder, output_type="pt").images
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    assert len(extra) == 5 and torch.equal(extra[0], torch.zeros_like(extra[0]))
    for step in range(1, 5):
        torch.testing.assert_close(extra[step], recorder.pred_original_samples[step - 1].clamp(-1, 1))
    assert any(extra[step].abs().max() > 0 for step in range(1, 5))


def test_loading_a_self_conditioned_pipeline_does_not_warn_that_its_keys_are_ignored(tmp_path):
    """diffusers warns that config keys UNet2DModel does not take "will be ignored": ours are read by the pipeline,
    so loading says nothing about them, and still warns about any other unexpected key."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_config_logger = logging.getLogger("diffusers.configuration_utils")
    diffusers_config_logger.addHandler(handler)
    try:
        unet = build_unet("tiny", 8, self_condition=True)
        AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
        loaded = AnimeDDPMPipeline.from_pretrained(tmp_path)
        assert loaded.unet.config.self_condition and not records
        UNet2DModel.from_config({**unet.config, "not_a_unet_key": 1})
    finally:
        diffusers_config_logger.removeHandler(handler)
    assert len(records) == 1 and "not_a_unet_key" in records[0].getMessage()


def test_predicted_x0_is_exact_for_the_oracle():
    """At the first step of DPM-Solver (no pred_original_sample from step), x0 is computed from the output."""
    pipe = oracle_pipeline("dpm++")
    recorder = DenoisingRecorder(steps=[-1])
    pipe(batch_size=4, num_inference_steps=20, callback_on_step_end=recorder, output_type="pt")
    x0 = recorder.pred_original_samples[0].double()
    np.testing.assert_allclose(x0.mean(dim=(0, 2, 3)).numpy(), ORACLE_MEAN, atol=0.05)


def test_callback_can_replace_latents():
    pipe = tiny_pipeline()

    def zero(pipe, step, timestep, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = pipe(num_inference_steps=3, callback_on_step_end=zero, output_type="pt").images
    assert torch.allclose(out, torch.full_like(out, 0.5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(output_type="jpeg"), "output_type"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=5000), "exceeds"),
        (dict(domain="anime"), "unconditional"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_loading_a_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a saved pipeline"):
        AnimeDDPMPipeline.from_pretrained(tmp_path)


def test_guidance_scale_must_be_finite():
    pipe = tiny_pipeline()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
            pipe(num_inference_steps=1, guidance_scale=bad)


# ----------------------------------------------------------------------------------------------------- helpers
def test_evenly_spaced_steps_start_from_noise_and_end_at_the_sample():
    assert evenly_spaced_steps(10, 4) == [0, 3, 6, 9]
    assert evenly_spaced_steps(39, 8)[0] == 0 and evenly_spaced_steps(39, 8)[-1] == 38
    assert len(evenly_spaced_steps(1000, 40)) == 40
    assert evenly_spaced_steps(5, 1) == [4]
    assert evenly_spaced_steps(5, 0) == evenly_spaced_steps(5, 9) == [0, 1, 2, 3, 4]
    assert DenoisingRecorder(num_snapshots=4).wanted_steps(10) == {0, 3, 6, 9}
    assert DenoisingRecorder(num_snapshots=0).wanted_steps(3) == {0, 1, 2}
    with pytest.raises(ValueError, match="num_snapshots"):
        DenoisingRecorder(num_snapshots=-1)


def test_display_scale_undoes_the_sigma_space_of_euler_only():
    pipe = tiny_pipeline()
    euler = scheduler_from("euler", pipe.scheduler)
    euler.set_timesteps(10)
    sigma = float(euler.sigmas[3])
    assert display_scale(euler, 2) == pytest.approx(1 / np.sqrt(1 + sigma**2))
    assert display_scale(euler, 9) == 1.0  # after the last step sigma is 0
    for name in ("ddpm", "dpm++"):  # variance-preserving latents: shown as they are
        scheduler = scheduler_from(name, pipe.scheduler)
        scheduler.set_timesteps(10)
        assert display_scale(scheduler, 2) == 1.0


# ----------------------------------------------------------------------------------------------------- loading
def test_a_saved_folder_loads_three_ways_with_the_same_images(tmp_path):
    """What a user types: our class; diffusers alone through the folder's pipeline.py; plain DDPMPipeline."""
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "pipeline.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "AnimeDDPMPipeline"
    kwargs = dict(batch_size=2, num_inference_steps=4, output_type="np")
    expected = pipe(generator=torch.Generator().manual_seed(1), **kwargs).images

    ours = AnimeDDPMPipeline.from_pretrained(tmp_path)
    remote = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(tmp_path), trust_remote_code=True)
    assert type(ours) is AnimeDDPMPipeline
    assert type(remote).__name__ == "AnimeDDPMPipeline" and type(remote) is not AnimeDDPMPipeline
    for loaded in (ours, remote):
        loaded.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(loaded(generator=torch.Generator().manual_seed(1), **kwargs).images, expected)
    assert type(DDPMPipeline.from_pretrained(tmp_path)) is DDPMPipeline


# ----------------------------------------------------------------------------------------------------- sharing
@pytest.fixture
def pushes(monkeypatch):
    """Records which push_to_hub a pipeline's push_to_hub reaches: anime_ddpm.hub's or diffusers' own."""
    import anime_ddpm.hub

    calls = []
    monkeypatch.setattr(anime_ddpm.hub, "push_to_hub", lambda pipe, repo_id, **kw: calls.append(("ours", kw)) or "u")
    monkeypatch.setattr(DiffusionPipeline, "push_to_hub", lambda pipe, repo_id, **kw: calls.append(("diffusers", kw)))
    return calls


def test_push_to_hub_goes_through_the_package_when_installed(pushes):
    assert tiny_pipeline().push_to_hub("alice/tiny", private=True) == "u"
    assert pushes == [("ours", {"private": True})]
    with pytest.raises(TypeError, match="pass them by keyword"):
        tiny_pipeline().push_to_hub("alice/tiny", "a commit message")


def test_push_to_hub_is_diffusers_own_without_the_package(pushes, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "anime_ddpm.hub", None)  # `from anime_ddpm.hub import ...` raises ImportError
    tiny_pipeline().push_to_hub("alice/tiny", private=True)
    assert pushes == [("diffusers", {"private": True})]
    monkeypatch.undo()

    # The saved pipeline.py running as remote code, beside the installed package: diffusers' push as well, since the
    # package's push takes its own class.
    tiny_pipeline().save_pretrained(tmp_path)
    remote = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(tmp_path), trust_remote_code=True)
    pushes.clear()
    import anime_ddpm.hub

    monkeypatch.setattr(anime_ddpm.hub, "push_to_hub", lambda *a, **kw: pushes.append(("ours", kw)))
    monkeypatch.setattr(DiffusionPipeline, "push_to_hub", lambda pipe, repo_id, **kw: pushes.append(("diffusers", kw)))
    remote.push_to_hub("alice/tiny")
    assert pushes == [("diffusers", {})]


def test_pipeline_module_imports_nothing_else_from_the_package():
    """pipeline.py is uploaded as every model's remote code: at module level it may import only diffusers & co."""
    tree = ast.parse(Path(pipeline_module.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    modules = [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in modules if m.startswith("anime_ddpm")] and all(
        node.level == 0 for node in top_level if isinstance(node, ast.ImportFrom)
    )
