"""Sharing on the Hub, tested over real HTTP against tests/hub_server.py (a loopback Hub look-alike).

Pushes and loads that must behave exactly as for a user run in fresh subprocesses with HF_ENDPOINT pointing at the
server, HF_HUB_OFFLINE=0 and an empty HF_HOME; the failure paths run in-process with huggingface_hub's endpoint and
offline switch patched (conftest.py turns offline mode on for everything else).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from huggingface_hub import ModelCard

from anime_ddpm import AnimeDDPMPipeline, build_unet, viz
from anime_ddpm import hub as hub_module
from anime_ddpm.emoji import ATTRIBUTION as OPENMOJI_ATTRIBUTION
from anime_ddpm.hub import HubError, TrainingInfo, files_to_upload, push_to_hub, render_model_card, save_for_hub

from .hub_server import HubServer


ALICE = "hf_aliceSECRETtoken0123456789abcdef"
BOB = "hf_bobSECRETtoken0123456789abcdef"
WRONG = "hf_wrongSECRETtoken0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[1]
INFO = {
    "dataset": "anime:0.7,celeba:0.3",
    "train_steps": 1200,
    "batch_size": 64,
    "learning_rate": 1e-4,
    "lr_scheduler": "cosine",
    "mixed_precision": "bf16",
    "use_ema": True,
    "ema_decay": 0.9999,
    "final_loss": 0.0421,
}


def tiny_pipeline(seed: int = 0) -> AnimeDDPMPipeline:
    torch.manual_seed(seed)
    pipe = AnimeDDPMPipeline(unet=build_unet("tiny", 8).eval(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def add_training_debris(folder: Path) -> None:
    """What a training output folder holds besides the model: none of it may reach the Hub."""
    for relative, data in {
        "checkpoint-500/optimizer.bin": b"adam",
        "checkpoint-500/model.safetensors": b"weights",
        "checkpoint-500/random_states_0.pkl": b"rng",
        "checkpoint-500/preview.png": b"png",
        "logs/train.log": b"log",
        "runs/anime/events.out.tfevents.1.host": b"tb",
        "optimizer.pt": b"adam",
        "training_args.json": json.dumps({"hub_token": ALICE}).encode(),
        "samples/step_100.png": b"png",
        ".cache/huggingface/upload/x.metadata": b"meta",
        "unet/optimizer.bin": b"adam",
        "unet_ema/diffusion_pytorch_model.safetensors": b"ema copy",
    }.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


MODEL_FILES = [
    "README.md",
    "model_index.json",
    "pipeline.py",
    "samples.png",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hub"), tokens={ALICE: "alice", BOB: "bob"}) as server:
        yield server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trainer-like output folder: the pipeline, card and grid from save_for_hub, plus checkpoints and logs."""
    folder = tmp_path_factory.mktemp("output") / "ddpm-tiny"
    pipe = tiny_pipeline()
    grid = viz.make_grid([pipe(output_type="pil", num_inference_steps=2).images[0]] * 4)
    save_for_hub(pipe, folder, TrainingInfo.from_dict(INFO), grid)
    add_training_debris(folder)
    return folder


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """This process's huggingface_hub pointed at the server, online, with no token unless a test sets one."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return hub


def subprocess_env(hub: HubServer, home: Path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    if token:
        env["HF_TOKEN"] = token
    return env


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------------------------------- model card
def test_model_card_metadata_and_sections():
    text = render_model_card(INFO, repo_id="alice/anime-64")
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["pipeline_tag"] == "unconditional-image-generation"
    assert {"unconditional-image-generation", "diffusion-models", "anime-ddpm"} <= set(data["tags"])
    assert data["datasets"] == ["DrishtiSharma/Anime-Face-Dataset", "nielsr/CelebA-faces"]
    assert data["license"] == "other"  # CelebA is research-only; the Kaggle anime set's terms are unclear
    body = card.text
    for snippet in [
        'AnimeDDPMPipeline.from_pretrained("alice/anime-64")',
        'DiffusionPipeline.from_pretrained("alice/anime-64", custom_pipeline="alice/anime-64", trust_remote_code=True)',
        'DDPMPipeline.from_pretrained("alice/anime-64")',
        "![Samples from anime-64](samples.png)",
        "| Data | anime (DrishtiSharma/Anime-Face-Dataset) 70%, celeba (nielsr/CelebA-faces) 30% |",
        "| Training steps | 1,200 |",
        "| Batch size (global) | 64 |",
        "| Learning rate | 1.00e-04 |",
        "| Precision | bf16 |",
        "| EMA | yes, decay 0.9999 |",
        "| Final loss | 0.0421 |",
        "non-commercial research purposes only",
        "Its terms are unclear",
        "## Limitations",
    ]:
        assert snippet in body, snippet
    assert "{{" not in text and "{%" not in text


def test_model_card_licences_and_domains():
    emoji = ModelCard(render_model_card({"dataset": "emoji", "domains": ["smileys", "people"]}, sample_grid=None))
    assert emoji.data.license == "cc-by-sa-4.0" and not emoji.data.datasets
    assert f'Attribution: "{OPENMOJI_ATTRIBUTION}"' in emoji.text  # the wording OpenMoji asks for
    assert OPENMOJI_ATTRIBUTION not in render_model_card(INFO) and "cc-by-sa" not in render_model_card(INFO)
    assert "## Samples" not in emoji.text
    assert "domain=" in emoji.text and "smileys, people" in emoji.text
    assert "= DDPMPipeline.from_pretrained" not in emoji.text  # it cannot pass the domain label
    assert hub_module.REPO_ID_PLACEHOLDER in emoji.text  # replaced by the real id at push time

    unknown = ModelCard(render_model_card(None))
    assert unknown.data.license == "other" and "not recorded" in unknown.text


def test_model_card_reads_mixtures_as_the_trainer_does():
    weighted = ModelCard(render_model_card({"dataset": "anime:3, celeba:1"}, sample_grid=None))
    assert "| Data | anime (DrishtiSharma/Anime-Face-Dataset) 75%, celeba (nielsr/CelebA-faces) 25% |" in weighted.text
    equal = render_model_card({"dataset": "emoji-smileys,emoji-people"}, sample_grid=None)
    assert "| Data | emoji-smileys (OpenMoji) 50%, emoji-people (OpenMoji) 50% |" in equal

    # What the trainer would refuse (a negative weight) still renders: the whole string as one unknown source.
    bad = ModelCard(render_model_card({"dataset": "anime:-1,celeba:2"}, sample_grid=None))
    assert "| Data | local images |" in bad.text and "%" not in bad.text.split("| Data |")[1].split("\n")[0]
    assert not bad.data.datasets and bad.data.license == "other"


@pytest.mark.parametrize(
    "dataset, hub_id",
    [("someone/faces", "someone/faces"), ("faces", None), ("a/b/c", None), ("someone/fa--ces", None)],
)
def test_model_card_links_only_valid_hub_dataset_ids(dataset, hub_id):
    card = ModelCard(render_model_card({"dataset": dataset}, sample_grid=None))
    assert card.data.datasets == ([hub_id] if hub_id else None)
    if hub_id:
        assert f"(https://huggingface.co/datasets/{hub_id})" in card.text
    else:
        assert "local image collection" in card.text


def test_model_card_names_itself_without_a_repo_id(tmp_path):
    unnamed = render_model_card(None)
    assert "# anime-ddpm model\n" in unnamed and "![Samples from anime-ddpm model](samples.png)" in unnamed
    assert "This model" not in unnamed

    folder = save_for_hub(
        tiny_pipeline(), tmp_path / "faces-32", {"dataset": "emoji"}, viz.make_grid(torch.ones(1, 3, 8, 8))
    )
    card = (folder / "README.md").read_text()
    assert "# faces-32\n" in card and "![Samples from faces-32](samples.png)" in card
    assert hub_module.REPO_ID_PLACEHOLDER in card  # the loading examples wait for the real id
    named = save_for_hub(tiny_pipeline(), tmp_path / "other", {"repo_id": "alice/anime-64"})
    assert "# anime-64\n" in (named / "README.md").read_text()


def test_model_card_needs_no_package_from_an_index():
    card = render_model_card(INFO, repo_id="alice/anime-64")
    assert "pip install anime-ddpm" not in card and "pypi.org" not in card
    assert "from its source" in card


def python_blocks(card: str) -> list[str]:
    return [block.split("\n", 1)[1] for block in card.split("```")[1::2] if block.startswith("python")]


@pytest.mark.parametrize("beta_schedule", ["linear", "laplace"])
def test_model_card_code_loads_and_builds_the_clipping_sampler(tmp_path, beta_schedule):
    """The card's code, run against a local copy: both loading routes work, and its DPM-Solver++ is the package's
    "dpm++" (x_0 clipped to [-1, 1] through thresholding, the training betas)."""
    from anime_ddpm.schedulers import scheduler_from

    pipe = tiny_pipeline()
    pipe.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
    folder = save_for_hub(pipe, tmp_path / "model", {"dataset": "emoji"}, repo_id=str(tmp_path / "model"))
    blocks = python_blocks((folder / "README.md").read_text())
    assert len(blocks) == 4  # diffusers with remote code, anime-ddpm, DPM-Solver++, DDPMPipeline
    assert "thresholding=True, sample_max_value=1.0" in blocks[2]
    no_sampling = ["\n".join(line for line in b.splitlines() if not line.startswith("image =")) for b in blocks]
    remote: dict = {}
    exec(no_sampling[0], remote)
    assert (
        type(remote["pipe"]).__name__ == "AnimeDDPMPipeline"
        and type(remote["pipe"]).__module__ != "anime_ddpm.pipeline"
    )
    namespace: dict = {}
    exec(no_sampling[1] + "\n" + no_sampling[2], namespace)
    card_scheduler = namespace["pipe"].scheduler
    expected = scheduler_from("dpm++", pipe.scheduler)
    assert type(card_scheduler) is type(expected)
    for key in ("thresholding", "sample_max_value", "algorithm_type", "solver_order", "prediction_type"):
        assert card_scheduler.config[key] == expected.config[key], key
    assert card_scheduler.config.thresholding and card_scheduler.config.sample_max_value == 1.0
    torch.testing.assert_close(card_scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)


def test_template_ships_with_the_package():
    from importlib.resources import files

    template = files("anime_ddpm").joinpath("model_card.md").read_text(encoding="utf-8")
    assert "{{ card_data }}" in template and "custom_pipeline" in template


# --------------------------------------------------------------------------------------------------- folders
def test_save_for_hub_and_upload_selection(model_dir):
    assert files_to_upload(model_dir) == MODEL_FILES
    assert (model_dir / "pipeline.py").read_bytes() == Path(hub_module.PIPELINE_SOURCE).read_bytes()
    config = json.loads((model_dir / "unet/config.json").read_text())
    assert ALICE not in json.dumps(config)
    card = (model_dir / "README.md").read_text()
    assert "| Resolution | 8x8 |" in card and "| Parameters |" in card and "| Noise schedule | linear |" in card


def test_upload_selection_rules(tmp_path):
    """Top-level files by name and images by suffix (any case), component folders at any depth; ignored names at any
    depth win over both."""
    index = {"_class_name": "AnimeDDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["x", "y"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    for relative in [
        "README.md", "Grid.PNG", "faces.jpeg", "notes.txt", "pipeline.py", "samples/step_100.png", "vae/config.json",
        "unet/config.json", "unet/sub/extra.json", "scheduler/scheduler_config.json",
        "unet/optimizer.pt", "unet/sub/checkpoint-3/w.bin", "unet/.DS_Store", "scheduler/__pycache__/x.pyc",
        "unet/runs/events.out.tfevents.1", "model.ckpt", ".hidden.png", "unet/logs/x.json", "unet/scaler.pt",
        "unet/logsbook/ok.json", "unet/my-checkpoint-1.json",
    ]:  # fmt: skip
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    assert files_to_upload(tmp_path) == [
        "Grid.PNG",
        "README.md",
        "faces.jpeg",
        "model_index.json",
        "pipeline.py",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/logsbook/ok.json",
        "unet/my-checkpoint-1.json",
        "unet/sub/extra.json",
    ]


def test_save_pretrained_writes_self_contained_pipeline_py(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path)
    source = (tmp_path / "pipeline.py").read_text()
    assert source == Path(hub_module.PIPELINE_SOURCE).read_text()
    imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert {name.split(".")[0] for name in imports} <= {*sys.stdlib_module_names, "__future__", "torch", "diffusers"}


# --------------------------------------------------------------------------------------------------- failures
def assert_failed_cleanly(error: pytest.ExceptionInfo, before: dict, folder: Path, capsys, caplog, *secrets):
    message = str(error.value)
    assert message.count(". ") == 0 and message.endswith("."), message  # one sentence
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)
    captured = capsys.readouterr()
    for secret in secrets:
        assert secret not in message and secret not in repr(error.value)
        assert secret not in captured.out + captured.err + caplog.text
    assert snapshot(folder) == before


def test_push_without_token(online, model_dir, capsys, caplog):
    before, requests = snapshot(model_dir), len(online.requests)
    with pytest.raises(HubError, match="no Hugging Face token") as error:
        push_to_hub(model_dir, "alice/no-token")
    assert_failed_cleanly(error, before, model_dir, capsys, caplog)
    assert len(online.requests) == requests  # failed before any request


def test_push_with_a_wrong_token(online, model_dir, capsys, caplog):
    before = snapshot(model_dir)
    caplog.set_level("DEBUG")
    with pytest.raises(HubError, match="rejected the token") as error:
        push_to_hub(model_dir, "alice/wrong-token", token=WRONG)
    assert_failed_cleanly(error, before, model_dir, capsys, caplog, WRONG)
    assert "alice/wrong-token" not in online.repos


def test_push_without_rights(online, model_dir, capsys, caplog, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", BOB)  # a valid token, for another namespace
    before = snapshot(model_dir)
    caplog.set_level("DEBUG")
    with pytest.raises(HubError, match="no write access") as error:
        push_to_hub(model_dir, "alice/not-bobs")
    assert_failed_cleanly(error, before, model_dir, capsys, caplog, BOB)
    assert "alice/not-bobs" not in online.repos


def test_push_offline(model_dir, capsys, caplog):
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest.py
    before = snapshot(model_dir)
    with pytest.raises(HubError, match="offline mode") as error:
        push_to_hub(model_dir, "alice/offline", token=ALICE)
    assert_failed_cleanly(error, before, model_dir, capsys, caplog, ALICE)


def test_push_unreachable(online, model_dir, capsys, caplog, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    before = snapshot(model_dir)
    with pytest.raises(HubError, match="unreachable") as error:
        push_to_hub(model_dir, "alice/unreachable", token=ALICE)
    assert_failed_cleanly(error, before, model_dir, capsys, caplog, ALICE)


def test_private_flag_and_public_repo_guard(online, tmp_path):
    folder = tmp_path / "model"
    tiny_pipeline(seed=1).save_pretrained(folder)  # no card, no grid: the push renders the card
    before = snapshot(folder)
    url = push_to_hub(folder, "alice/public-one", token=ALICE)
    assert url == f"{online.url}/alice/public-one"
    assert online.repos["alice/public-one"]["private"] is False
    files = online.files("alice/public-one")
    assert sorted(files) == [f for f in MODEL_FILES if f != "samples.png"]
    card = ModelCard(files["README.md"].decode())
    assert 'from_pretrained("alice/public-one")' in card.text and "## Samples" not in card.text
    assert snapshot(folder) == before  # the card went up, not onto disk

    assert push_to_hub(folder, "public-one", token=ALICE) == url  # again, into the token's own namespace
    assert len(online.repos["alice/public-one"]["commits"]) <= 2 and online.files("alice/public-one") == files

    commits = len(online.repos["alice/public-one"]["commits"])
    with pytest.raises(HubError, match="exists and is public"):
        push_to_hub(folder, "alice/public-one", token=ALICE, private=True)
    assert len(online.repos["alice/public-one"]["commits"]) == commits


def test_push_completes_a_bare_repo_name_in_the_card(online, tmp_path):
    folder = save_for_hub(tiny_pipeline(), tmp_path / "model", {"repo_id": "bare", "dataset": "local folder /x/y"})
    assert push_to_hub(folder, "bare", token=ALICE) == f"{online.url}/alice/bare"
    card = ModelCard(online.files("alice/bare")["README.md"].decode())
    assert 'AnimeDDPMPipeline.from_pretrained("alice/bare")' in card.text and '"bare"' not in card.text
    assert not card.data.datasets and "local image collection" in card.text and "/x/y" not in card.text


def test_importing_hub_patches_nothing():
    assert getattr(AnimeDDPMPipeline, "hub_push_function", None) is None


def test_push_takes_only_the_repo_id_positionally(tmp_path):
    with pytest.raises(TypeError, match="positional"):
        push_to_hub(tmp_path, "alice/x", "a commit message")


def test_pipeline_push_goes_through_hub_push_to_hub(monkeypatch):
    """`pipe.push_to_hub(repo_id, **kwargs)` is `hub.push_to_hub(pipe, repo_id, **kwargs)`: card, grid, errors."""
    calls = []
    monkeypatch.setattr(hub_module, "push_to_hub", lambda *args, **kwargs: calls.append((args, kwargs)) or "url")
    pipe = tiny_pipeline()
    assert pipe.push_to_hub("alice/x", token=ALICE, private=True, num_samples=0) == "url"
    assert calls == [((pipe, "alice/x"), {"token": ALICE, "private": True, "num_samples": 0})]


def test_sample_grid_of_a_pipeline():
    grid, caption = hub_module.make_sample_grid(tiny_pipeline(), num_images=4, seed=3, steps=2)
    tile = 8 * 8  # 8 px samples, upscaled to 64 px for the eye (viz.auto_scale), as the trainer's grids
    assert grid.size == (2 * (tile + 2) + 2, 2 * (tile + 2) + 2)  # 2 x 2 tiles, 2 px white padding
    assert grid.getpixel((0, 0)) == (255, 255, 255)
    assert caption == "4 samples, seeds 3-6, dpm++ sampler with 2 steps."


def test_push_rejects_bad_repo_ids_and_folders(tmp_path):
    with pytest.raises(HubError, match="not a Hub repo id"):
        push_to_hub(tmp_path, "a/b/c", token=ALICE)
    with pytest.raises(HubError, match="not a saved pipeline"):
        push_to_hub(tmp_path, "alice/empty", token=ALICE)


# --------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_push_then_load_three_ways_in_a_fresh_process(online, model_dir, tmp_path, monkeypatch, capfd, caplog):
    hub = online
    # 1. Push as a user would, token from HF_TOKEN: the trainer's folder with hub.push_to_hub (private), a pipeline
    #    object with pipe.push_to_hub, and the same through diffusers' own push_to_hub. In this process the client's
    #    endpoint is set the way HF_ENDPOINT sets it at import (a second interpreter would cost ~6 s of CPU).
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)  # diffusers calls the module-level client
    monkeypatch.setenv("HF_TOKEN", ALICE)
    caplog.set_level("DEBUG")
    urls = [push_to_hub(model_dir, "alice/tiny-folder", private=True), tiny_pipeline().push_to_hub("tiny-pipe")]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "anime_ddpm.hub", None)  # as for remote code without the package: diffusers' own
        tiny_pipeline().push_to_hub("alice/tiny-diffusers")
    captured = capfd.readouterr()
    assert ALICE not in captured.out + captured.err + caplog.text
    assert urls == [f"{hub.url}/alice/tiny-folder", f"{hub.url}/alice/tiny-pipe"]
    diffusers_files = hub.files("alice/tiny-diffusers")  # save_pretrained's pipeline.py rides along
    assert sorted(diffusers_files) == [f for f in MODEL_FILES if f != "samples.png"]
    assert diffusers_files["pipeline.py"] == (model_dir / "pipeline.py").read_bytes()

    assert hub.repos["alice/tiny-folder"]["private"] is True
    files = hub.files("alice/tiny-folder")
    assert sorted(files) == MODEL_FILES  # no checkpoints, logs, runs, optimizer states or training args
    for name in MODEL_FILES[1:]:
        assert files[name] == (model_dir / name).read_bytes(), name
    readme = files["README.md"].decode()
    assert 'AnimeDDPMPipeline.from_pretrained("alice/tiny-folder")' in readme
    assert hub_module.REPO_ID_PLACEHOLDER not in readme and ALICE not in readme

    assert hub.repos["alice/tiny-pipe"]["private"] is False
    pipe_files = hub.files("alice/tiny-pipe")
    assert sorted(pipe_files) == MODEL_FILES
    assert "16 samples, seeds 0-15" in pipe_files["README.md"].decode()

    with pytest.raises(urllib.error.HTTPError) as anonymous:  # private: invisible without the owner's token
        urllib.request.urlopen(f"{hub.url}/api/models/alice/tiny-folder")
    assert anonymous.value.code == 404

    # 2. Load in a fresh process (HF_ENDPOINT, HF_HUB_OFFLINE=0, empty HF_HOME), each route with its own empty cache; the remote-code and DDPMPipeline routes run
    #    with anime_ddpm made unimportable, as for a user who has only diffusers.
    out = tmp_path / "loaded.npz"
    load = run_python(
        f"""
        import sys, numpy as np, torch
        sys.modules["anime_ddpm"] = None  # an import of anime_ddpm now raises ImportError
        from diffusers import DDPMPipeline, DiffusionPipeline
        repo, cache, results = "alice/tiny-folder", {str(tmp_path / "cache")!r}, {{}}

        def record(name, pipe):
            pipe.set_progress_bar_config(disable=True)
            images = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                          output_type="np").images
            results[name] = np.asarray(images)
            for key, value in pipe.unet.state_dict().items():
                results[name + "/" + key] = value.numpy()
            print(name, type(pipe).__module__, type(pipe).__name__)

        record("remote", DiffusionPipeline.from_pretrained(repo, custom_pipeline=repo, trust_remote_code=True,
                                                           cache_dir=cache + "/remote"))
        record("ddpm", DDPMPipeline.from_pretrained(repo, cache_dir=cache + "/ddpm"))
        del sys.modules["anime_ddpm"]
        from anime_ddpm import AnimeDDPMPipeline
        record("package", AnimeDDPMPipeline.from_pretrained(repo, cache_dir=cache + "/package"))
        record("pushed-object", AnimeDDPMPipeline.from_pretrained("alice/tiny-pipe", cache_dir=cache + "/object"))
        np.savez({str(out)!r}, **results)
        """,
        subprocess_env(hub, tmp_path / "home-load", ALICE),
    )
    assert ALICE not in load.stdout + load.stderr
    classes = dict(line.split(" ", 1) for line in load.stdout.splitlines())
    assert classes["remote"].startswith("diffusers_modules.") and classes["remote"].endswith(" AnimeDDPMPipeline")
    assert classes["ddpm"] == "diffusers.pipelines.ddpm.pipeline_ddpm DDPMPipeline"
    assert classes["package"] == "anime_ddpm.pipeline AnimeDDPMPipeline"

    loaded = np.load(out)
    local = AnimeDDPMPipeline.from_pretrained(model_dir)
    local.set_progress_bar_config(disable=True)
    expected = local(
        batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    for route in ("remote", "ddpm", "package"):
        for key, value in local.unet.state_dict().items():
            np.testing.assert_array_equal(loaded[f"{route}/{key}"], value.numpy(), err_msg=f"{route}: {key}")
        np.testing.assert_allclose(loaded[route], expected.images, atol=1e-6, err_msg=route)
    for key, value in tiny_pipeline().unet.state_dict().items():  # pipe.push_to_hub pushed those weights
        np.testing.assert_array_equal(loaded[f"pushed-object/{key}"], value.numpy())
