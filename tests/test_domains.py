"""Domain conditioning (issue 8): label dropout, classifier-free guidance, domain names that travel with the model.

The sampler is checked against an exact noise predictor: for data drawn uniformly from a finite set of images,
E[x_0 | x_t] is a softmax-weighted average of the images, so E[eps | x_t, class] is known in closed form for each
class (its own images) and for the null class (the union). Sampling with that oracle must land on the images of the
requested class.
"""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from anime_ddpm import AnimeDDPMPipeline
from anime_ddpm.conditioning import (
    SourceConditioning,
    check_class_dropout_prob,
    conditional_unet_config,
    domain_grid,
    domain_names,
    drop_labels,
    num_class_embeds_for,
    register_domains,
    sample_per_domain,
    unet_domains,
)
from anime_ddpm.hub import make_sample_grid
from anime_ddpm.models import unet_config
from anime_ddpm.sampling import with_scheduler

from .oracle import STUB_UNET_CONFIG


pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the oracle's unused layers

SIZE = 8
K = 3  # images per class
DOMAINS = ["squares", "stripes"]


def class_images() -> list[torch.Tensor]:
    """Two classes of K fixed 8x8 RGB images in [-0.9, 0.9], each image far from every other."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(K, 3, SIZE, SIZE, generator=g) * 1.8 - 0.9) for _ in DOMAINS]


class FiniteSetOracle(UNet2DModel):
    """E[eps | x_t, class] for data uniform on a finite image set per class; the null class is the union.

    Records every call as (batch size, class labels) so tests can count UNet evaluations.
    """

    def __init__(self, images: list[torch.Tensor], alphas_cumprod: torch.Tensor, conditional: bool = True):
        super().__init__(
            sample_size=SIZE, num_class_embeds=len(images) + 1 if conditional else None, **STUB_UNET_CONFIG
        )
        self.sets = [x.double() for x in images] + [torch.cat(images).double()]
        self.abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.calls: list[tuple[int, list[int] | None]] = []

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        self.calls.append((sample.shape[0], None if class_labels is None else class_labels.tolist()))
        x = sample.double()
        t = torch.as_tensor(timestep).long().reshape(-1).expand(x.shape[0])
        abar = self.abar[t].view(-1, 1, 1, 1)
        null = len(self.sets) - 1
        labels = torch.full((x.shape[0],), null) if class_labels is None else class_labels.long().cpu()
        x0 = torch.empty_like(x)
        for label in labels.unique().tolist():
            rows = labels == label
            images = self.sets[label]  # (K, C, H, W)
            xs, a = x[rows], abar[rows]
            d2 = (xs[:, None] - a[:, None].sqrt() * images[None]).square().flatten(2).sum(-1)  # (b, K)
            w = torch.softmax(-d2 / (2 * (1 - a.view(-1, 1))), dim=1)
            x0[rows] = torch.einsum("bk,kchw->bchw", w, images)
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        return UNet2DOutput(sample=eps.to(sample.dtype))


def oracle_pipeline(conditional: bool = True):
    base = DDPMScheduler(num_train_timesteps=1000)
    oracle = FiniteSetOracle(class_images(), base.alphas_cumprod, conditional)
    if conditional:
        register_domains(oracle, DOMAINS)
    pipe = AnimeDDPMPipeline(unet=oracle, scheduler=DDIMScheduler.from_config(base.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, n=8, steps=30, seed=0, **kwargs) -> torch.Tensor:
    out = pipe(
        batch_size=n,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        **kwargs,
    )
    return out.images * 2 - 1


def nearest_class(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class of each sample's nearest training image, RMS distance to it)."""
    images = torch.cat(class_images())
    rms = (samples[:, None].double() - images[None].double()).square().flatten(2).mean(-1).sqrt()  # (n, 2K)
    distance, index = rms.min(dim=1)
    return index // K, distance


# ------------------------------------------------------------------------------------------- pure logic
def test_label_dropout_rate_and_values():
    labels = torch.arange(20000) % 2
    dropped = drop_labels(labels, 0.1, null=2, generator=torch.Generator().manual_seed(0))
    is_null = dropped == 2
    # Binomial(20000, 0.1): sd 0.0021, so +-0.01 is ~5 sd.
    assert abs(is_null.float().mean().item() - 0.1) < 0.01
    for k in (0, 1):  # independent of the class
        assert abs(is_null[labels == k].float().mean().item() - 0.1) < 0.015
    assert torch.equal(dropped[~is_null], labels[~is_null])  # kept labels are untouched
    assert torch.equal(labels, torch.arange(20000) % 2)  # input not modified
    again = drop_labels(labels, 0.1, null=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)  # seeded: reproducible
    rate = (drop_labels(labels, 0.3, null=2) == 2).float().mean().item()  # global RNG
    assert abs(rate - 0.3) < 0.015
    assert torch.equal(drop_labels(labels, 0.0, null=2), labels)
    assert (drop_labels(labels, 1.0, null=2) == 2).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_class_dropout_prob(1.5)


def test_source_conditioning_sizes_and_names():
    assert SourceConditioning.from_sources(["emoji"]) is None  # single source: unconditional
    assert num_class_embeds_for(["emoji"]) is None
    cond = SourceConditioning.from_sources(["emoji-smileys", "emoji-people"], 0.2)
    assert cond.domains == ["emoji-smileys", "emoji-people"]
    assert cond.num_class_embeds == 3 and cond.null_label == 2
    source = torch.tensor([0, 1] * 5000)
    assert torch.equal(cond.labels(source, train=False), source)
    labels = cond.labels(source, torch.Generator().manual_seed(1))
    assert abs((labels == 2).float().mean().item() - 0.2) < 0.02
    with pytest.raises(ValueError, match="out of range"):
        cond.labels(torch.tensor([2]))
    # local paths become their folder names, unless that makes two equal; presets and Hub ids stay as written
    assert domain_names(["/data/anime", "./photos/", "huggan/anime-faces", "d/**/*.parquet"]) == [
        "anime",
        "photos",
        "huggan/anime-faces",
        "d",
    ]
    assert domain_names(["/a/faces", "/b/faces"]) == ["/a/faces", "/b/faces"]


def test_register_domains_checks_classes():
    unet = UNet2DModel(**unet_config("tiny", SIZE, num_class_embeds=3))
    register_domains(unet, DOMAINS)
    assert unet_domains(unet) == DOMAINS
    with pytest.raises(ValueError, match="num_class_embeds=3"):
        register_domains(unet, ["a", "b", "c"])
    with pytest.raises(ValueError, match="num_class_embeds=None"):
        register_domains(UNet2DModel(**unet_config("tiny", SIZE)), DOMAINS)
    config = conditional_unet_config(unet_config("tiny", SIZE), DOMAINS)
    assert config["num_class_embeds"] == 3 and config["domains"] == DOMAINS


# ------------------------------------------------------------------------------------------- UNet evaluations
def test_unet_calls_per_step():
    pipe = oracle_pipeline()
    steps, b, null = 5, 3, len(DOMAINS)

    def calls(**kwargs):
        pipe.unet.calls.clear()
        sample(pipe, n=b, steps=steps, **kwargs)
        return list(pipe.unet.calls)

    assert calls() == [(b, [null] * b)] * steps  # domain=None: the null class, one evaluation
    assert calls(guidance_scale=4.0) == [(b, [null] * b)] * steps  # guidance needs a domain: still one
    assert calls(domain="stripes") == [(b, [1] * b)] * steps  # scale 1: conditional only, one evaluation
    assert calls(domain=0, guidance_scale=1.0) == [(b, [0] * b)] * steps
    # guided: exactly one batched call of 2B per step, conditional rows first, then null rows
    assert calls(domain="stripes", guidance_scale=3.0) == [(2 * b, [1] * b + [null] * b)] * steps


def test_unconditional_models_unchanged():
    pipe = oracle_pipeline(conditional=False)
    assert pipe.domains == []
    pipe.unet.calls.clear()
    x = sample(pipe, n=4, steps=5, guidance_scale=3.0)
    assert pipe.unet.calls == [(4, None)] * 5  # no class labels, no second evaluation
    assert torch.equal(x, sample(pipe, n=4, steps=5))
    with pytest.raises(ValueError, match="unconditional"):
        sample(pipe, n=1, steps=1, domain=0)


# ------------------------------------------------------------------------------------------- the oracle samples
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("k", [0, 1])
def test_sampling_a_domain_lands_on_its_images(k, guidance_scale):
    pipe = oracle_pipeline()
    samples = sample(pipe, n=12, domain=DOMAINS[k], guidance_scale=guidance_scale, seed=k)
    classes, distance = nearest_class(samples)
    assert (classes == k).all(), classes
    assert distance.max() < 0.02, distance


def test_unconditional_sampling_covers_both_domains():
    classes, distance = nearest_class(sample(oracle_pipeline(), n=16))
    assert set(classes.tolist()) == {0, 1}
    assert distance.max() < 0.02


def test_guidance_formula_is_exact():
    """w = 0 is the null prediction; a tiny w - 1 is the conditional prediction: same trajectories as unguided."""
    pipe = oracle_pipeline()
    torch.testing.assert_close(sample(pipe, n=4, domain=1, guidance_scale=0.0), sample(pipe, n=4), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        sample(pipe, n=4, domain=1, guidance_scale=1.0 + 1e-9), sample(pipe, n=4, domain=1), atol=1e-5, rtol=0
    )


# ------------------------------------------------------------------------------------------- saved pipelines
def test_conditional_pipeline_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = register_domains(UNet2DModel(**unet_config("tiny", SIZE, num_class_embeds=3)), DOMAINS)
    AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["domains"] == DOMAINS

    pipe = AnimeDDPMPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.domains == DOMAINS
    by_name = sample(pipe, n=2, steps=3, domain="stripes", guidance_scale=2.0)
    by_index = sample(pipe, n=2, steps=3, domain=1, guidance_scale=2.0)
    assert by_name.shape == (2, 3, SIZE, SIZE) and torch.isfinite(by_name).all()
    assert torch.equal(by_name, by_index)
    assert torch.equal(by_name, sample(pipe, n=2, steps=3, domain="1", guidance_scale=2.0))  # CLI: an index string
    assert not torch.equal(by_name, sample(pipe, n=2, steps=3, domain="squares", guidance_scale=2.0))
    with pytest.raises(ValueError, match=r"Unknown domain 'photos'.*squares"):
        pipe(num_inference_steps=2, domain="photos")
    with pytest.raises(ValueError, match="out of range"):
        pipe(num_inference_steps=2, domain=2)  # the null class is not a domain

    grid = domain_grid(pipe, 4, num_inference_steps=2, guidance_scale=2.0)
    assert grid.height > 2 * SIZE  # two labelled rows
    # The card's grid (push_to_hub of a pipeline object) shows the same labelled rows as the trainer's samples.png.
    card_grid, _ = make_sample_grid(pipe, 4, steps=2)
    rows = domain_grid(with_scheduler(pipe, "dpm++"), 4, num_inference_steps=2, seed=0, batch_size=4)
    assert card_grid.size == rows.size and card_grid.tobytes() == rows.tobytes()
    per_domain = sample_per_domain(pipe, 2, num_inference_steps=2)
    assert list(per_domain) == DOMAINS and per_domain["squares"].shape == (2, 3, SIZE, SIZE)


def test_remote_code_and_model_card_know_the_domains(tmp_path):
    """The folder's pipeline.py (what remote-code users run) samples a domain; the card lists the domains."""
    from diffusers import DiffusionPipeline

    from anime_ddpm.hub import save_for_hub

    torch.manual_seed(0)
    unet = register_domains(UNet2DModel(**unet_config("tiny", SIZE, num_class_embeds=3)), DOMAINS)
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    save_for_hub(pipe, tmp_path, {"dataset": "emoji-smileys:0.5,emoji-people:0.5"})
    card = (tmp_path / "README.md").read_text()
    assert "squares, stripes" in card and 'domain="squares"' in card

    remote = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(tmp_path), trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    assert type(remote).__module__ != AnimeDDPMPipeline.__module__  # the copied file, not the package
    assert remote.domains == DOMAINS
    ours = sample(pipe, n=2, steps=3, domain="stripes", guidance_scale=2.0)
    torch.testing.assert_close(sample(remote, n=2, steps=3, domain="stripes", guidance_scale=2.0), ours)


# ------------------------------------------------------------------------------------------- training
def _colour_folder(folder, rgb, count=8, size=16):
    from PIL import Image

    folder.mkdir()
    g = torch.Generator().manual_seed(sum(rgb))
    for i in range(count):
        jitter = (torch.rand(size, size, 3, generator=g) * 40).to(torch.uint8)
        pixels = (torch.tensor(rgb, dtype=torch.uint8).expand(size, size, 3) - jitter).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_training_with_condition_on_source(tmp_path):
    """Two local folders mixed: the saved pipeline knows both domains, samples each, and the previews have a row
    per domain; the CLI samples a domain by name."""
    from anime_ddpm import cli

    from .test_training_runs import TINY, start

    reds = _colour_folder(tmp_path / "reds", (250, 60, 60))
    blues = _colour_folder(tmp_path / "blues", (60, 60, 250))
    out = tmp_path / "model"
    args = [*TINY, "--dataset", f"{reds}:0.5,{blues}:0.5", "--condition_on_source", "--class_dropout_prob", "0.2",
            "--max_train_steps", "2", "--train_batch_size", "4", "--save_images_steps", "2", "--logger", "none",
            "--lr_warmup_steps", "0", "--output_dir", str(out)]  # fmt: skip
    run = start(args, tmp_path / "train.log").wait(timeout=240)
    assert run.returncode == 0, run.output[-3000:]

    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["domains"] == ["reds", "blues"] and config["num_class_embeds"] == 3
    assert "reds, blues" in (out / "README.md").read_text()
    pipe = AnimeDDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.domains == ["reds", "blues"]
    for name in pipe.domains:
        assert torch.isfinite(sample(pipe, n=1, steps=2, domain=name, guidance_scale=2.0)).all()
    from PIL import Image

    # previews and the final grid (4 images): a labelled row of 2 per domain, i.e. 2 columns plus a label margin
    for path in (out / "samples" / "step-0000002.png", out / "samples.png"):
        grid = Image.open(path).convert("L")
        assert grid.width > grid.height, grid.size  # 2 x 2 tiles + the labels on the left
        margin = torch.tensor(list(grid.crop((0, 0, grid.width - grid.height, grid.height)).getdata()))
        assert (margin < 128).any()  # the row labels' text

    grid = tmp_path / "blues.png"
    assert cli.main(["sample", str(out), "--domain", "blues", "--guidance-scale", "2", "--num", "2", "--steps", "2",
                     "--device", "cpu", "--output", str(grid)]) == 0  # fmt: skip
    assert grid.is_file()


def test_build_model_for_domains(tmp_path):
    from anime_ddpm.config import TrainingConfig
    from anime_ddpm.errors import TrainingError
    from anime_ddpm.losses import make_noise_scheduler
    from anime_ddpm.state import build_model

    scheduler = make_noise_scheduler()
    cond = SourceConditioning(DOMAINS)
    model = build_model(TrainingConfig(model="tiny", resolution=SIZE), scheduler, cond)
    assert model.config.num_class_embeds == 3 and unet_domains(model) == DOMAINS
    assert build_model(TrainingConfig(model="tiny", resolution=SIZE), scheduler).config.num_class_embeds is None

    UNet2DModel(**unet_config("tiny", SIZE)).save_config(tmp_path / "plain")
    from_file = build_model(TrainingConfig(model_config_name_or_path=str(tmp_path / "plain")), scheduler, cond)
    assert from_file.config.num_class_embeds == 3 and unet_domains(from_file) == DOMAINS
    model.save_config(tmp_path / "conditional")
    with pytest.raises(TrainingError, match="--condition_on_source"):
        build_model(TrainingConfig(model_config_name_or_path=str(tmp_path / "conditional")), scheduler)
    with pytest.raises(TrainingError, match="class_dropout_prob"):
        TrainingConfig(condition_on_source=True, class_dropout_prob=1.5).validate()
