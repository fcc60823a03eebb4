"""Hub streaming, end to end: the real trainer and the unmodified datasets / huggingface_hub clients against
tests/hub_server.py serving stand-ins of the preset repos (tests/hub_datasets.py: same layout, schema and row groups).

Every run is a fresh subprocess with HF_ENDPOINT at the server, offline mode off and its own empty HF_HOME; all start
at once in one module fixture (two cores: the runs are mostly start-up and waiting). Which images a run trained on
comes from the test hooks' per-step example hashes (tests/train_with_hooks.py), compared with the stand-in images
preprocessed here exactly as the trainer does (16 px, centre crop, CelebA's face box).

A mixture (`interleave_datasets` of parquet streams) ends each pass, and closes at exit, with datasets' 5 s pause
for parquet reader threads (`SLEEP_TIME_ON_THREADS_SHUTDOWN`, apache/arrow#45214): the mixture's trainer keeps it
(what users get; the library is not patched in the trainer's process) and waits in parallel with the other runs.
The in-process checks (in one more subprocess, since both clients fix the endpoint at import) set it to 0, as
conftest.py does for the test process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

from anime_ddpm import data

from . import hub_datasets
from .hub_datasets import ANIME_ID, CELEBA_ID
from .hub_server import HubServer
from .test_training_runs import ROOT, TINY, accelerate_launch, env, read_jsonl, read_summary, start, wait_for


pytestmark = pytest.mark.slow

ALICE = "hf_aliceSECRETtoken0123456789abcdef"
BOB = "hf_bobSECRETtoken0123456789abcdef"
PRIVATE = "alice/private-faces"
GATED = "alice/gated-faces"
MISSING = "alice/no-such-faces"
FLAKY = "alice/faces"  # 24 images: 3 steps an epoch, so the stream opens its file again every 3 steps
LARGE = "alice/large-faces"  # 48 large JPEGs in one 11 MB file, read in several Range requests: cut mid-file
START_OUTAGE = 12  # seconds the Hub refuses connections from the first request of its run
SHORT_OUTAGE, RETRY_MINUTES_OF_LONG = 26, 0.05  # longer than huggingface_hub's own retries (~23 s); past 3 s
ANIME_ROWS, CELEBA_ROWS_PER_FILE = 400, 150  # 4 row groups in one file; 3 files of 2 row groups
RESOLUTION = 16
BATCH = 8
RESUME_STEPS, CHECKPOINT_EVERY, KILL_AT = 20, 6, 18  # resume from checkpoint-12 (image 96), across row group 1


# ---------------------------------------------------------------------------------------------------- helpers
def image_hash(pixels) -> str:
    """The test hooks' example hash of one preprocessed image."""
    return hashlib.sha1(pixels.float().numpy().tobytes()).hexdigest()[:16]


def expected_hashes(images: list[bytes], crop_box=None) -> list[str]:
    """The hashes the trainer's data pipeline gives these JPEGs at 16 px (centre crop, no flip), in order."""
    preprocess = data.Preprocess(RESOLUTION, jpeg_draft=data.DataConfig().jpeg_draft)
    rng = np.random.default_rng(0)  # unused without random crops or flips
    return [image_hash(preprocess.from_file({"bytes": b}, rng, crop_box)) for b in images]


def hub_env(hub, home: Path, token: str | None = None, server=None) -> dict[str, str]:
    return dict(HF_ENDPOINT=(server or hub.server).url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", HF_HOME=str(home),
                HF_TOKEN=token or "", HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip


def train_args(dataset: str, out: Path, steps: int, *extra: str, batch: int = BATCH) -> list[str]:
    return [*TINY, "--dataset", dataset, "--train_batch_size", str(batch), "--max_train_steps", str(steps),
            "--lr_warmup_steps", "1", "--save_images_steps", "0", "--logging_steps", "100", "--logger", "none",
            "--output_dir", str(out), "--debug_dump_dir", str(out.parent / f"{out.name}-dump"), *extra]  # fmt: skip


def step_hashes(dump: Path, rank: int = 0) -> list[list[str]]:
    return [record["examples"] for record in read_jsonl(dump / f"rank{rank}.jsonl") if "examples" in record]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def release_orphans(run) -> None:
    """After a run's main process was SIGKILLed, SIGKILL what is left of its session, as a job scheduler would (its
    forked DataLoader workers do not hold the folder's lock: rundir.py takes a POSIX lock, which forks do not
    inherit)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.process.pid, signal.SIGKILL)


# In-process checks, in a subprocess: build_dataset + the loader with 2 workers on the one-file anime repo (each
# worker tags its batches), and the error sentences that depend on the token.
IN_PROCESS = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import datasets.config
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    import torch
    from torch.utils.data import default_collate, get_worker_info
    from anime_ddpm.data import DataConfig, DataError, build_dataloader, build_dataset

    def collate(examples):
        batch = default_collate(examples)
        batch["worker"] = get_worker_info().id
        return batch

    result = {}
    dataset = build_dataset(DataConfig(dataset="anime", resolution=16))
    loader = build_dataloader(dataset, 8, num_workers=2, collate_fn=collate)
    workers = {}
    for batch in loader:
        hashes = [hashlib.sha1(x.float().numpy().tobytes()).hexdigest()[:16] for x in batch["pixel_values"]]
        workers.setdefault(str(batch["worker"]), []).extend(hashes)
    result.update(num_shards=dataset.num_shards, num_workers=loader.num_workers, workers=workers,
                  num_examples=dataset.num_examples)
    for name, repo, token in json.loads(sys.argv[1]):
        os.environ["HF_TOKEN"] = token or ""
        try:
            images = len(list(build_dataset(DataConfig(dataset=repo, resolution=16, shuffle_buffer=0))))
            result[name] = {"images": images}
        except DataError as error:
            result[name] = {"error": str(error)}
    print("RESULT " + json.dumps(result))
    """
)
TOKEN_CASES = [("gated_without_access", GATED, BOB), ("private_other_token", PRIVATE, BOB),
               ("private_owner_token", PRIVATE, ALICE), ("gated_granted", GATED, "hf_carolSECRETtoken")]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-streaming")
    anime_files, anime_images = hub_datasets.anime_files(ANIME_ROWS)
    celeba_files, celeba_images = hub_datasets.celeba_files(CELEBA_ROWS_PER_FILE)
    small_files, small_images = hub_datasets.anime_files(24, seed=7)
    tokens = {ALICE: "alice", BOB: "bob", "hf_carolSECRETtoken": "carol"}
    large_files, _ = hub_datasets.large_photo_files(LARGE)
    flaky = {
        name: HubServer(root / f"{name}-server").start() for name in ("short", "long", "mid", "start")
    }  # one outage each
    for server in flaky.values():
        server.add_dataset(FLAKY, small_files)
    flaky["mid"].add_dataset(LARGE, large_files)
    with HubServer(root / "server", tokens=tokens) as server:
        server.add_dataset(FLAKY, small_files)
        server.add_dataset(LARGE, large_files)
        server.add_dataset(ANIME_ID, anime_files)
        server.add_dataset(CELEBA_ID, celeba_files)
        server.add_dataset(PRIVATE, small_files, private=True)
        server.add_dataset(GATED, small_files, gated=True, granted=["carol"])
        yield types.SimpleNamespace(
            server=server,
            root=root,
            anime=expected_hashes(anime_images),
            celeba=expected_hashes(celeba_images, data.CELEBA_FACE_BOX),
            celeba_uncropped=set(expected_hashes(celeba_images)),
            small=expected_hashes(small_images),
            files={ANIME_ID: anime_files, CELEBA_ID: celeba_files},
            flaky=flaky,
        )
    for flaky_server in flaky.values():
        flaky_server.stop()


@pytest.fixture(scope="module")
def runs(hub):
    """Every run at once; returns when all have ended (a resume starts when the run it resumes has died)."""
    root = hub.root

    def home(name: str) -> Path:
        return root / f"home-{name}"

    launched = {}

    def launch(name, args, token=None, launcher=None, server=None, **extra):
        launched[name] = start(
            args, root / f"{name}.log", launcher=launcher, **hub_env(hub, home(name), token, server), **extra
        )

    # A: anime without shuffling, uninterrupted; B1: the same, killed while writing checkpoint-18; B2: B1 resumed.
    every = ["--checkpointing_steps", str(CHECKPOINT_EVERY)]
    resume = ["--shuffle_buffer", "0", *every]
    launch("a", train_args("anime", root / "a", RESUME_STEPS, *resume))
    launch("b1", train_args("anime", root / "b", RESUME_STEPS, *resume, "--debug_kill_in_checkpoint", str(KILL_AT)))
    # S1/S2: the same with a small shuffle buffer and 2 DataLoader workers, killed and resumed.
    shuffled = ["--shuffle_buffer", "64", "--dataloader_num_workers", "2", *every]
    launch("s1", train_args("anime", root / "s", RESUME_STEPS, *shuffled, "--debug_kill_in_checkpoint", str(KILL_AT)))
    launch("ddp", train_args("anime", root / "ddp", 3, batch=4), ACCELERATE_USE_CPU="true",
           launcher=accelerate_launch("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())))  # fmt: skip
    launch("celeba", train_args("celeba", root / "celeba", 4))
    launch("mix", train_args("anime:0.5,celeba:0.5", root / "mix", 6, "--condition_on_source"))
    launch("private", train_args(PRIVATE, root / "private", 2, "--shuffle_buffer", "0"), token=ALICE)
    for name, dataset in (("e_private", PRIVATE), ("e_gated", GATED), ("e_missing", MISSING)):
        launch(name, train_args(dataset, root / name, 2))
    in_process = subprocess.Popen(
        [sys.executable, "-c", IN_PROCESS, json.dumps(TOKEN_CASES)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env(**hub_env(hub, home("in-process"))),
    )  # fmt: skip

    def resumes_b():  # B2: B1 resumed; B3: resumed again, from the checkpoint-18 that the resumed B2 wrote
        ended["b1"] = launched.pop("b1").wait()
        launch("b2", train_args("anime", root / "b", RESUME_STEPS, *resume, "--resume_from_checkpoint", "latest"))
        ended["b2"] = launched.pop("b2").wait()
        launch("b3", [*train_args("anime", root / "b", RESUME_STEPS, *resume, "--resume_from_checkpoint", "checkpoint-18"),
                      "--debug_dump_dir", str(root / "b3-dump")])  # fmt: skip

    def resumes_s():
        ended["s1"] = launched.pop("s1").wait()
        release_orphans(ended["s1"])
        launch("s2", train_args("anime", root / "s", RESUME_STEPS, *shuffled, "--resume_from_checkpoint", "latest"))

    # Outages (each on its own server): none; one the run waits out; one past --data_retry_minutes, then resumed.
    def flaky_args(name, *extra):
        return train_args(FLAKY, root / name, 15, "--shuffle_buffer", "0", "--checkpointing_steps", "3",
                          "--debug_step_sleep", "0.3", *extra)  # fmt: skip

    launch("o_none", flaky_args("o_none"))
    hub.flaky["start"].outage_at_first_request(START_OUTAGE, "refuse")  # down as the run starts: resolving waits
    launch("o_start", flaky_args("o_start"), server=hub.flaky["start"])
    # Cut inside the parquet file: the first Range read from its middle starts an outage of SHORT_OUTAGE seconds.
    mid_file = ["--shuffle_buffer", "0", "--checkpointing_steps", "6"]
    launch("o_mid_none", train_args(LARGE, root / "o_mid_none", 12, *mid_file))
    hub.flaky["mid"].outage_mid_file(SHORT_OUTAGE, "refuse")
    launch("o_mid", train_args(LARGE, root / "o_mid", 12, *mid_file), server=hub.flaky["mid"])
    launch("o_short", flaky_args("o_short"), server=hub.flaky["short"])
    long_args = flaky_args("o_long", "--data_retry_minutes", str(RETRY_MINUTES_OF_LONG))
    launch("o_long", long_args, server=hub.flaky["long"])

    def outage(name: str, seconds: float) -> None:
        wait_for(root / name / "checkpoint-3", launched[name])
        hub.flaky[name[2:]].outage(seconds, "refuse")

    def short_outage():
        outage("o_short", SHORT_OUTAGE)

    def long_outage_then_resume():
        outage("o_long", 3600)
        ended["o_long"] = launched.pop("o_long").wait()
        hub.flaky["long"].heal()
        launch("o_long_resumed", [*long_args, "--resume_from_checkpoint", "latest"], server=hub.flaky["long"])

    ended = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        tasks = [pool.submit(resumes_b), pool.submit(resumes_s), pool.submit(short_outage),
                 pool.submit(long_outage_then_resume)]  # fmt: skip
        for future in tasks:
            future.result()
    output, _ = in_process.communicate(timeout=300)
    for run in launched.values():
        run.wait()
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert in_process.returncode == 0 and lines, output[-3000:]
    return types.SimpleNamespace(root=root, in_process=json.loads(lines[-1][len("RESULT ") :]), **launched, **ended)


def succeeded(run) -> None:
    assert run.returncode == 0, run.output[-4000:]


# ---------------------------------------------------------------------------------------------------- the server
def test_server_answers_ranges_lfs_headers_and_access_errors(hub):
    import urllib.error
    import urllib.request

    server, path = hub.server, "data/train-00000-of-00001.parquet"
    url = f"{server.url}/datasets/{ANIME_ID}/resolve/main/{path}"
    whole = hub.files[ANIME_ID][path]
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
        assert response.headers["X-Linked-Size"] == str(len(whole))
        assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(whole).hexdigest()}"'
        assert len(response.headers["X-Repo-Commit"]) == 40
    for wanted, part, content_range in [("bytes=4-", whole[4:], f"bytes 4-{len(whole) - 1}/{len(whole)}"),
                                        ("bytes=-8", whole[-8:], f"bytes {len(whole) - 8}-{len(whole) - 1}/{len(whole)}"),
                                        ("bytes=0-3", b"PAR1", f"bytes 0-3/{len(whole)}")]:  # fmt: skip
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": wanted})) as response:
            assert (response.status, response.headers["Content-Range"], response.read()) == (206, content_range, part)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={len(whole)}-"}))
    assert info.value.code == 416
    tree = json.loads(urllib.request.urlopen(f"{server.url}/api/datasets/{CELEBA_ID}/tree/main/data").read())
    assert [entry["path"] for entry in tree] == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert all(entry["lfs"]["size"] == entry["size"] for entry in tree)
    for repo, token, code, error_code in [(PRIVATE, None, 404, "RepoNotFound"), (GATED, None, 401, "GatedRepo"),
                                          (GATED, BOB, 403, "GatedRepo"), (MISSING, None, 404, "RepoNotFound")]:  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(
            f"{server.url}/datasets/{repo}/resolve/main/dataset_infos.json", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request)
        assert (info.value.code, info.value.headers["X-Error-Code"]) == (code, error_code), repo
    info = json.loads(urllib.request.urlopen(f"{server.url}/api/datasets/{GATED}").read())
    assert info["gated"] == "auto"  # a gated repo's card data and file list stay public


def test_server_faults_for_outage_tests(hub):
    import urllib.error
    import urllib.request

    server = hub.server
    infos = f"{server.url}/datasets/{ANIME_ID}/resolve/main/dataset_infos.json"
    parquet = f"{server.url}/datasets/{ANIME_ID}/resolve/main/data/train-00000-of-00001.parquet"
    try:
        server.fail_next(1, "503", match=r"dataset_infos")
        server.fail_next(1, "429", match=r"dataset_infos", retry_after=7)
        for code in (503, 429):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(infos)
            assert info.value.code == code
        assert info.value.headers["Retry-After"] == "7"
        assert urllib.request.urlopen(infos).status == 200  # both faults served
        server.fail_next(1, "drop", match=r"\.parquet$")
        with pytest.raises(Exception, match="IncompleteRead"):
            urllib.request.urlopen(parquet).read()
        server.fail_next(1, "reset")
        with pytest.raises(OSError):
            urllib.request.urlopen(infos).read()
        server.outage(0.5, "refuse")
        with pytest.raises(urllib.error.URLError, match="refused"):
            urllib.request.urlopen(infos, timeout=5)
        time.sleep(0.8)
        assert urllib.request.urlopen(infos).status == 200  # listening again, on the same port
        server.outage(30, "503")
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(infos)
        server.heal()
        size = len(hub.files[ANIME_ID]["data/train-00000-of-00001.parquet"])
        server.outage_mid_file(0.5, "refuse")
        for span in ("0-999", f"{size - 1000}-{size - 1}"):  # the header, the footer: not mid-file
            assert (
                urllib.request.urlopen(urllib.request.Request(parquet, headers={"Range": f"bytes={span}"})).status
                == 206
            )
        with pytest.raises(OSError):
            urllib.request.urlopen(urllib.request.Request(parquet, headers={"Range": "bytes=1000-1999"})).read()
        assert server.cut_reads[-1][1:] == (1000, 1999, size)
        time.sleep(0.2)
        with pytest.raises(urllib.error.URLError, match="refused"):
            urllib.request.urlopen(infos, timeout=5)
        time.sleep(0.8)
        assert urllib.request.urlopen(infos).status == 200
        server.outage_at_first_request(0.5, "refuse")
        with pytest.raises(OSError):  # the next request, whenever it comes, fails and starts the outage
            urllib.request.urlopen(infos).read()
        time.sleep(0.2)
        with pytest.raises(urllib.error.URLError, match="refused"):
            urllib.request.urlopen(infos, timeout=5)
        time.sleep(0.8)
        assert urllib.request.urlopen(infos).status == 200
    finally:
        server.heal()
    assert urllib.request.urlopen(infos).status == 200
    statuses = [entry["status"] for entry in server.log if entry["path"].endswith(("dataset_infos.json", ".parquet"))]
    assert statuses[-14:] == [503, 429, 200, "drop", "reset", 200, 503, 206, 206, "reset", 200, "reset", 200, 200]


# ---------------------------------------------------------------------------------------------------- training
def test_anime_trains_from_the_stream_in_file_order_without_a_buffer(hub, runs):
    succeeded(runs.a)
    steps = step_hashes(runs.root / "a-dump")
    seen = [h for step in steps for h in step]
    assert len(steps) == RESUME_STEPS and seen == hub.anime[: RESUME_STEPS * BATCH]  # rows 0-159, across row groups
    summary = read_summary(runs.root / "a")
    assert summary["images"] == RESUME_STEPS * BATCH and summary["skipped_files"] == {}
    parquet = f"/datasets/{ANIME_ID}/resolve/"
    assert any(e["path"].startswith(parquet) and e["status"] == 206 for e in hub.server.log)


def test_celeba_trains_on_the_face_crop_of_every_file(hub, runs):
    succeeded(runs.celeba)
    seen = [h for step in step_hashes(runs.root / "celeba-dump") for h in step]
    assert len(seen) == 4 * BATCH == len(set(seen))  # shuffled, nothing twice
    assert set(seen) <= set(hub.celeba) and not set(seen) & hub.celeba_uncropped
    assert read_summary(runs.root / "celeba")["skipped_files"] == {}
    requested = {e["path"].rsplit("/", 1)[-1] for e in hub.server.log if CELEBA_ID in e["path"] and e["range"]}
    assert requested == {f"train-0000{i}-of-00003.parquet" for i in range(3)}


def test_a_mixture_conditioned_on_its_sources_sees_both_and_saves_two_domains(hub, runs):
    succeeded(runs.mix)
    seen = [h for step in step_hashes(runs.root / "mix-dump") for h in step]
    anime, celeba = sum(h in set(hub.anime) for h in seen), sum(h in set(hub.celeba) for h in seen)
    assert anime > 0 and celeba > 0 and anime + celeba == len(seen) == 6 * BATCH
    config = json.loads((runs.root / "mix" / "unet" / "config.json").read_text())
    assert config["domains"] == ["anime", "celeba"] and config["num_class_embeds"] == 3


def test_two_ddp_ranks_stream_disjoint_shares(hub, runs):
    succeeded(runs.ddp)
    assert "x 2 process(es)" in runs.ddp.output
    shares = [[h for step in step_hashes(runs.root / "ddp-dump", rank) for h in step] for rank in range(2)]
    assert [len(share) for share in shares] == [3 * 4, 3 * 4]
    assert not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) <= set(hub.anime)


def test_resume_mid_epoch_without_a_buffer_repeats_and_skips_nothing(hub, runs):
    assert runs.b1.returncode != 0  # SIGKILLed while writing checkpoint-18
    succeeded(runs.b2)
    assert "Resuming from" in runs.b2.output and "checkpoint-12" in runs.b2.output
    uninterrupted = step_hashes(runs.root / "a-dump")
    before = step_hashes(runs.root / "b-dump")[:12]  # the same folder: B1's steps, then B2's
    after = step_hashes(runs.root / "b-dump")[-(RESUME_STEPS - 12) :]
    assert before == uninterrupted[:12] and after == uninterrupted[12:]
    assert [h for step in before + after for h in step] == hub.anime[: RESUME_STEPS * BATCH]


def test_a_second_resume_continues_from_the_resumed_runs_checkpoint(runs):
    """The checkpoint a resumed run writes holds its true data position (not the state it was resumed from)."""
    succeeded(runs.b3)
    assert "checkpoint-18" in runs.b3.output
    assert step_hashes(runs.root / "b3-dump") == step_hashes(runs.root / "a-dump")[18:]


def test_resume_with_a_buffer_and_two_workers_repeats_nothing(hub, runs):
    """The buffer's content is lost on resume (up to 64 images skipped), but no image comes twice in the epoch."""
    assert runs.s1.returncode != 0
    succeeded(runs.s2)
    assert "checkpoint-12" in runs.s2.output
    steps = step_hashes(runs.root / "s-dump")
    seen = [h for step in steps[:12] + steps[-(RESUME_STEPS - 12) :] for h in step]
    assert len(seen) == RESUME_STEPS * BATCH == len(set(seen)) and set(seen) <= set(hub.anime)
    assert seen[: 12 * BATCH] != hub.anime[: 12 * BATCH]  # shuffled


def test_two_workers_both_read_the_one_file_anime_repo(hub, runs):
    result = runs.in_process
    assert result["num_shards"] == ANIME_ROWS // hub_datasets.ROWS_PER_GROUP and result["num_workers"] == 2
    assert result["num_examples"] == ANIME_ROWS  # from dataset_infos.json
    workers = result["workers"]
    assert sorted(workers) == ["0", "1"] and all(len(hashes) > 0 for hashes in workers.values())
    assert not set(workers["0"]) & set(workers["1"])
    assert sorted(workers["0"] + workers["1"]) == sorted(hub.anime)  # one pass: every image once


def test_a_shuffled_parquet_stream_resumes_in_two_workers(tmp_path):
    """The data.py side of the test above, in-process on a local file: 4 row groups, a buffer, 2 workers."""
    images = hub_datasets.anime_images(40)
    (tmp_path / "train.parquet").write_bytes(hub_datasets.image_parquet(images, rows_per_group=10))
    config = data.DataConfig(dataset=str(tmp_path / "train.parquet"), resolution=RESOLUTION, shuffle_buffer=8)

    def hashes(batches) -> list[str]:
        return [image_hash(pixels) for batch in batches for pixels in batch["pixel_values"]]

    loader = data.build_dataloader(data.build_dataset(config), 4, num_workers=2)
    batches = iter(loader)
    before = hashes(next(batches) for _ in range(3))
    state = loader.state_dict()
    resumed = data.build_dataloader(data.build_dataset(config), 4, num_workers=2)
    resumed.load_state_dict(state)
    after = hashes(resumed)  # the rest of the epoch, less what the buffers held
    assert len(before) == 12 and after and len(set(before + after)) == len(before + after)
    assert set(before + after) <= set(expected_hashes(images))


# ---------------------------------------------------------------------------------------------------- access
def test_a_private_repo_works_with_the_owners_token(hub, runs):
    succeeded(runs.private)
    seen = [h for step in step_hashes(runs.root / "private-dump") for h in step]
    assert seen == hub.small[: 2 * BATCH]
    assert runs.in_process["private_owner_token"] == {"images": len(hub.small)}
    assert runs.in_process["gated_granted"] == {"images": len(hub.small)}


@pytest.mark.parametrize(
    "name, repo, words",
    [
        ("e_private", PRIVATE, ["is not on the Hugging Face Hub, or it is private", "HF_TOKEN"]),
        ("e_missing", MISSING, ["is not on the Hugging Face Hub, or it is private", "check the name"]),
        ("e_gated", GATED, ["is gated", f"/datasets/{GATED}", "HF_TOKEN"]),
    ],
)
def test_private_gated_and_missing_repos_fail_with_one_sentence(runs, name, repo, words):
    run = getattr(runs, name)
    assert run.returncode == 2
    lines = [line for line in run.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("train_with_accelerate: error:")]
    assert lines == errors and len(errors) == 1 and f"'{repo}'" in errors[0], run.output[-3000:]  # nothing else
    assert all(word in errors[0] for word in words), errors[0]
    assert "Traceback" not in run.output and "--dataset emoji" not in errors[0]
    assert not (runs.root / name).exists()  # failed before making the run's folder


def test_token_dependent_sentences(runs):
    gated, private = runs.in_process["gated_without_access"], runs.in_process["private_other_token"]
    assert "not been granted access" in gated["error"] and f"/datasets/{GATED}" in gated["error"]
    assert "your token cannot read it" in private["error"]


# ---------------------------------------------------------------------------------------------------- outages
def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    first, second = (load_file(p / "unet" / "diffusion_pytorch_model.safetensors") for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_an_outage_longer_than_the_hubs_own_retries_is_waited_out_with_the_same_result(runs):
    for name in ("o_none", "o_short"):
        succeeded(getattr(runs, name))
    assert same_weights(runs.root / "o_none", runs.root / "o_short")
    assert step_hashes(runs.root / "o_short-dump") == step_hashes(runs.root / "o_none-dump")
    log = runs.o_short.output
    assert log.count("The data host does not answer") == 1 and "Connection re" in log  # refused or reset
    assert log.count("Still retrying the data host") <= 1  # one line a minute, not one per request and retry
    assert log.count("thrown while requesting") <= 2 and log.count("Retrying in") <= 2


def test_a_hub_down_as_the_run_starts_is_waited_for_with_the_same_result(runs):
    succeeded(runs.o_start)
    log = runs.o_start.output
    assert "The Hub (127.0.0.1) does not answer" in log and "answers again after" in log
    assert same_weights(runs.root / "o_none", runs.root / "o_start")
    assert step_hashes(runs.root / "o_start-dump") == step_hashes(runs.root / "o_none-dump")


def test_an_outage_that_cuts_a_file_in_the_middle_is_waited_out_with_the_same_result(hub, runs):
    for name in ("o_mid_none", "o_mid"):
        succeeded(getattr(runs, name))
    ((path, start, end, size),) = hub.flaky["mid"].cut_reads  # the one read that started the outage
    assert path.endswith(".parquet") and 0 < start and end < size - 1
    assert same_weights(runs.root / "o_mid_none", runs.root / "o_mid")
    assert step_hashes(runs.root / "o_mid-dump") == step_hashes(runs.root / "o_mid_none-dump")
    assert runs.o_mid.output.count("The data host does not answer") == 1


def test_an_outage_past_the_retry_budget_ends_with_a_checkpoint_then_resumes_as_if_nothing_happened(runs):
    stopped = runs.o_long
    assert stopped.returncode == 1, stopped.output[-3000:]
    errors = [line for line in stopped.output.splitlines() if line.startswith("train_with_accelerate: error:")]
    assert len(errors) == 1 and "Traceback" not in stopped.output, stopped.output[-3000:]
    assert "The training data has been unreachable for" in errors[0]
    assert (
        "the work is in" in errors[0]
        and "run the same command again with --resume_from_checkpoint latest." in errors[0]
    )
    succeeded(runs.o_long_resumed)
    assert "Resuming from" in runs.o_long_resumed.output
    assert same_weights(runs.root / "o_none", runs.root / "o_long")
