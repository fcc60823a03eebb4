"""The README's shell and Python blocks, run as written, so that they cannot drift from the code.

Every ```bash and ```python block of README.md is taken apart into commands (bash) or run whole (Python), each in
a fresh folder that looks like a clone of this repository (links to the Makefile, the package, `.venv`...), with
HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1 and `.venv/bin` off the PATH until the README's `source .venv/bin/activate`.
Where the README's command would take minutes it runs with tiny settings instead (`TINY_TRAIN`, `TINY_SAMPLING`).
What needs the Hub runs against the loopback Hub of tests/hub_server.py (`your-name` becomes the test user).

What cannot run here (the network, GPUs, several machines, an interactive login, the suite itself) is listed in
`NOT_RUN` with the reason, and still checked: its trainer flags go through `anime_ddpm.config.parse_args` and
`validate()`, its launcher flags through Accelerate's own parser. A command that matches neither a runner nor an
entry of `NOT_RUN` fails the test, and so does an entry of `NOT_RUN` that no command matches any more.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .hub_server import HubServer


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = ROOT / ".venv"
# What a clone holds that the README's commands use; each test folder links to these.
CLONE = ("Makefile", "pyproject.toml", "scripts", "train_with_accelerate.py", "anime_ddpm", "model_card.md", ".venv")
TOKEN = "hf_readmeTESTtoken0123456789abcdef"
HUB_USER = "alice"
ACTIVATE = "source .venv/bin/activate"

# Training as the README's commands do it, but in seconds: appended after the README's own flags (the last wins).
TINY_TRAIN = ["--model", "tiny", "--resolution", "16", "--max_train_steps", "2", "--checkpointing_steps", "1",
              "--sample_steps", "2", "--num_samples", "4", "--eval_batch_size", "4"]  # fmt: skip
TINY_RESUMED = ["--max_train_steps", "3"]  # a resume then trains one more step than the run it continues
TINY_SAMPLING = {"sample": 2, "denoise": 2, "evaluate": 4}  # --num; every one gets --steps 2

# Commands that are not run here, by how they begin, and why. Each is checked as far as it can be (flags parsed).
NOT_RUN = {
    "make test": "it runs the whole suite, which this test is part of (it would recurse)",
    "make setup TORCH=": "installs torch into a fresh .venv from the network",
    "make setup TORCH_INDEX_URL=": "installs torch into a fresh .venv from the network",
    "pip install": "installs from PyPI and PyTorch's index (the network); `make setup` does the same",
    "hf auth login": "interactive; the test hands its Hub token over as HF_TOKEN instead",
    "hf upload": "uploads a Space, and the test Hub serves model repositories only",
    "accelerate launch --quiet --num_processes 1 --num_machines 1": "what `make train` runs (compared with its recipe), which the quick start runs",
    "accelerate launch --quiet --mixed_precision bf16 train_with_accelerate.py --dataset anime": "needs a GPU and the Hub's anime faces",
    "accelerate launch --multi_gpu": "needs several GPUs (and machines)",
    "accelerate launch --use_deepspeed": "needs GPUs and DeepSpeed",
    "accelerate launch --use_fsdp": "needs GPUs",
    "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2": "two processes; tests/test_distributed.py runs real DDP over gloo",
    "make train OUTPUT_DIR=outputs/ddpm-anime-celeba-64": "streams anime and CelebA from the Hub (the network)",
    "make train OUTPUT_DIR=outputs/ddpm-my-faces-32": "needs your own folder of images",
}  # fmt: skip


# ============================================================================================= the README's blocks
@dataclass
class Block:
    language: str
    code: str
    line: int  # of the opening fence

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block, with its language (the Architecture tree has none)."""
    text = README.read_text() if text is None else text
    blocks, current, start, language = [], None, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current, start, language = [], number, line[3:].strip()
            else:
                blocks.append(Block(language, "\n".join(current) + "\n", start))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"README.md:{start}: a fenced block is not closed"
    return blocks


@dataclass
class Command:
    words: list[str]
    line: int

    @property
    def text(self) -> str:
        return shlex.join(self.words)

    def starts_with(self, prefix: str) -> bool:
        """Whether the command begins with these words (the last one may be the start of a word: `TORCH=`)."""
        *whole, last = prefix.split()
        words = self.words
        return words[: len(whole)] == whole and len(words) > len(whole) and words[len(whole)].startswith(last)


def commands_of(block: Block) -> list[Command]:
    """A bash block's commands: continuation lines joined, comments dropped."""
    commands, pending, first = [], "", 0
    for offset, line in enumerate(block.code.splitlines()):
        if not pending:
            first = block.line + 1 + offset
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        if words:
            commands.append(Command(words, first))
        pending = ""
    return commands


def not_run_reason(command: Command) -> str | None:
    return next((reason for prefix, reason in NOT_RUN.items() if command.starts_with(prefix)), None)


# ============================================================================================= what each command is
def option_value(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words and words.index(flag) + 1 < len(words) else None


def set_option(words: list[str], flag: str, value: str) -> list[str]:
    words = list(words)
    if flag in words:
        words[words.index(flag) + 1] = value
    else:
        words += [flag, value]
    return words


def make_variables(words: list[str]) -> dict[str, str]:
    return dict(word.split("=", 1) for word in words[2:] if "=" in word)


def output_dir_of(command: Command) -> str | None:
    """The run folder of a `make train` command (the Makefile's default unless OUTPUT_DIR says otherwise)."""
    if command.words[:2] != ["make", "train"]:
        return None
    return make_variables(command.words).get("OUTPUT_DIR", "outputs/ddpm-emoji-32")


def hub_command(text: str) -> bool:
    return "your-name/" in text


# Runners whose commands only read what earlier commands made: consecutive ones run side by side.
READERS = ("cli", "serve", "python")


def runner_of(command: Command) -> str | None:
    """Which way of running a command applies ('make-train', 'cli', 'serve', ...), or None when none does."""
    words = command.words
    if words[:2] == ["make", "train"]:
        return "make-train"
    if command.text == ACTIVATE:
        return "activate"
    if words[:1] == ["anime-ddpm"] and len(words) > 1:
        if words[1] == "demo":
            return "cli" if "--export-space" in words else "serve"
        if words[1] in ("sample", "denoise", "noise", "data-preview", "evaluate"):
            return "cli"
        if words[1] == "posthoc-ema":
            return "cli-writer"  # it makes a pipeline that the commands after it read: run before them, not beside
    if words[:2] == ["python", "-c"] or words == ["python", "train_with_accelerate.py", "--help"]:
        return "python"
    return None


def transformed(command: Command) -> list[str]:
    """The command as the test runs it: tiny settings where the README's would take minutes."""
    words = list(command.words)
    if words[:2] == ["make", "train"]:
        variables = make_variables(words)
        extra = TINY_TRAIN + (TINY_RESUMED if "--resume_from_checkpoint" in variables.get("TRAIN_ARGS", "") else [])
        train_args = " ".join(filter(None, [variables.get("TRAIN_ARGS", ""), shlex.join(extra)]))
        words = [w for w in words if not w.startswith("TRAIN_ARGS=")] + [f"TRAIN_ARGS={train_args}"]
        if not setup_is_current():  # the set-up would reinstall .venv: run the same recipe without it
            words = ["make", "-o", ".venv/.installed", *words[1:]]
    elif words[:1] == ["anime-ddpm"] and words[1] in TINY_SAMPLING:
        words = set_option(set_option(words, "--num", str(TINY_SAMPLING[words[1]])), "--steps", "2")
    if hub_command(command.text):
        words = [w.replace("your-name/", f"{HUB_USER}/") for w in words]
    return words


_setup_current: list[bool] = []


def setup_is_current() -> bool:
    """`make -q setup`: whether .venv is up to date, so that `make train` runs no set-up."""
    if not _setup_current:
        result = subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True)
        _setup_current.append(result.returncode == 0)
    return _setup_current[0]


# ============================================================================================= checks that need no run
def parse_trainer_flags(words: list[str], where: str) -> None:
    """The trainer's flags of a command (after train_with_accelerate.py, or in TRAIN_ARGS), parsed and validated."""
    from anime_ddpm.config import parse_args
    from anime_ddpm.errors import TrainingError

    if "train_with_accelerate.py" in words:
        flags = words[words.index("train_with_accelerate.py") + 1 :]
    else:
        flags = shlex.split(make_variables(words).get("TRAIN_ARGS", ""))
    flags = [w for w in flags if w != "..."]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_args(flags).validate()
    except SystemExit:
        pytest.fail(f"{where}: train_with_accelerate.py refuses {shlex.join(flags)}: {stderr.getvalue().strip()}")
    except TrainingError as error:
        pytest.fail(f"{where}: train_with_accelerate.py refuses {shlex.join(flags)}: {error}")


def parse_launcher_flags(words: list[str], where: str) -> None:
    from accelerate.commands.launch import launch_command_parser

    start = words.index("accelerate") + 2
    launcher = words[start : words.index("train_with_accelerate.py") + 1]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            launch_command_parser().parse_args(launcher)
    except SystemExit:
        pytest.fail(f"{where}: accelerate launch refuses {shlex.join(launcher)}: {stderr.getvalue().strip()[-300:]}")


def make_train_recipe() -> list[str]:
    """What `make train` runs with the Makefile's defaults, as words."""
    # --no-print-directory: under `make test` (MAKELEVEL set) make would add "Entering directory" lines
    result = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/.installed", "train"], cwd=ROOT,
                            capture_output=True, text=True, check=True)  # fmt: skip
    words = shlex.split(result.stdout.replace("\\\n", " "))
    return [w.replace(str(VENV / "bin") + "/", "").replace(".venv/bin/", "") for w in words]


def check_not_run(command: Command) -> None:
    """What can be checked of a command that is not run."""
    where = f"README.md:{command.line}"
    words = command.words
    if "train_with_accelerate.py" in words:
        parse_trainer_flags(words, where)
        parse_launcher_flags(words, where)
        if command.starts_with("accelerate launch --quiet --num_processes 1 --num_machines 1"):
            assert words == make_train_recipe(), (
                f"{where}: not what `make train` runs: {shlex.join(make_train_recipe())}"
            )
    elif words[:2] == ["make", "train"]:
        parse_trainer_flags(words, where)
    elif words[:2] == ["make", "setup"]:
        variable = words[2].split("=")[0]
        assert re.search(rf"\${{{variable}\b", (ROOT / "scripts" / "setup_venv.sh").read_text()), f"{where}: setup ignores {variable}"  # fmt: skip
    elif words[:2] == ["pip", "install"] and "-e" in words:
        extras = re.findall(r"\[(.*)\]", words[-1])[0].split(",")
        for extra in extras:
            assert re.search(rf"^{extra} = \[", (ROOT / "pyproject.toml").read_text(), re.M), (
                f"{where}: no extra {extra}"
            )
    elif words[:1] == ["hf"]:
        assert (VENV / "bin" / "hf").exists(), f"{where}: .venv has no `hf` command"


def python_blocks() -> list[Block]:
    return [block for block in readme_blocks() if block.language == "python"]


def bash_blocks() -> list[Block]:
    return [block for block in readme_blocks() if block.language == "bash"]


def coverage_problems(text: str) -> list[str]:
    """What keeps the README's blocks from being checked: a language this test cannot run, a command that is
    neither run nor listed in NOT_RUN, an entry of NOT_RUN that no command matches any more."""
    blocks = readme_blocks(text)
    problems = [f"{b.where}: a ```{b.language} block, which this test cannot run" for b in blocks
                if b.language not in ("bash", "python", "")]  # fmt: skip
    problems += [f"{b.where}: a fence without a language that is not the Architecture tree" for b in blocks
                 if b.language == "" and "anime_ddpm/" not in b.code]  # fmt: skip
    matched = set()
    for block in (b for b in blocks if b.language == "bash"):
        for command in commands_of(block):
            matched.update(prefix for prefix in NOT_RUN if command.starts_with(prefix))
            if not (not_run_reason(command) or runner_of(command)):
                problems.append(
                    f"README.md:{command.line}: `{command.text}` is neither run by tests/test_readme.py nor listed "
                    "in its NOT_RUN with a reason: add a runner or an entry"
                )
    problems += [f"NOT_RUN entry {prefix!r} matches no README command any more" for prefix in NOT_RUN if prefix not in matched]  # fmt: skip
    return problems


def test_every_block_is_run_or_listed():
    assert not coverage_problems(README.read_text()), "\n".join(coverage_problems(README.read_text()))
    assert python_blocks(), "the README has no Python block"


def test_a_new_block_must_be_run_or_listed():
    text = (
        README.read_text()
        + "\n```bash\nanime-ddpm frobnicate outputs/x\ncurl https://example.com\n```\n\n```sh\nls\n```\n"
    )
    problems = coverage_problems(text)
    assert any("anime-ddpm frobnicate" in p for p in problems) and any("curl" in p for p in problems), problems
    assert any("```sh block" in p for p in problems), problems
    stale = coverage_problems(text.replace("hf upload", "hf download"))
    assert any("'hf upload' matches no README command" in p for p in stale), stale


def test_commands_that_are_not_run_still_parse():
    for block in bash_blocks():
        for command in commands_of(block):
            if not_run_reason(command):
                check_not_run(command)


def test_a_mistyped_flag_would_fail_this_test():
    command = Command(["make", "train", "TRAIN_ARGS=--learnig_rate 1e-3"], 1)
    with pytest.raises(pytest.fail.Exception, match="did you mean --learning_rate"):
        check_not_run(command)
    with pytest.raises(pytest.fail.Exception, match="adam_beta1 must be"):
        check_not_run(Command(["make", "train", "TRAIN_ARGS=--adam_beta1 2"], 1))
    command = Command(["accelerate", "launch", "--multi_gpux", "train_with_accelerate.py"], 1)
    with pytest.raises(pytest.fail.Exception, match="accelerate launch refuses"):
        parse_launcher_flags(command.words, "here")


# ============================================================================================= running them
@dataclass
class Job:
    """A block's commands (or a Python session), run one after the other in a folder of their own."""

    name: str
    folder: Path
    commands: list[Command] = field(default_factory=list)
    needs: set[str] = field(default_factory=set)  # run folders (outputs/...) other jobs make first
    produces: dict[str, Command] = field(default_factory=dict)  # run folder -> the command that trains it
    script: str | None = None  # a Python session instead of commands
    hub: HubServer | None = None
    activated: bool = True  # later blocks run in the shell that the quick start's `source .venv/bin/activate` set up


class Slots:
    """A semaphore that lets the highest priority (lowest number) waiter in first: the runs that other blocks
    wait for go before the rest, so that the cores are not shared out evenly while everyone waits for them."""

    def __init__(self, count: int):
        self.free, self.waiting, self.condition = count, [], threading.Condition()

    @contextlib.contextmanager
    def take(self, priority: int):
        ticket = (priority, time.monotonic())
        with self.condition:
            self.waiting.append(ticket)
            self.condition.wait_for(lambda: self.free > 0 and min(self.waiting) == ticket)
            self.waiting.remove(ticket)
            self.free -= 1
        try:
            yield
        finally:
            with self.condition:
                self.free += 1
                self.condition.notify_all()


def priority(command: Command, job: Job) -> int:
    """0: training, which other blocks wait for; 1: the rest of the quick start; 2: everything else."""
    if command.words[:2] == ["make", "train"]:
        return 0
    return 1 if not job.activated else 2


class Runner:
    def __init__(self, root: Path):
        self.root = root
        self.failures: list[str] = []
        self.log: list[str] = []
        self.made: dict[str, threading.Event] = {}
        self.made_in: dict[str, Path] = {}
        self.slots = Slots(max(2, os.cpu_count() or 1))  # subprocesses at once: mostly imports, CPU-bound
        self.hubs: list[HubServer] = []
        self.lock = threading.Lock()
        self.started = time.monotonic()

    # -------------------------------------------------------------------------------------------- the folders
    def clone(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True)
        for item in CLONE:
            (folder / item).symlink_to(ROOT / item)
        (folder / "home").mkdir()
        return folder

    def env(self, job: Job, hub: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "VIRTUAL_ENV"))}
        venv_bin = str(VENV / "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin))  # fmt: skip
        env.update(HF_HOME=str(job.folder / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                   HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")  # fmt: skip
        env.pop("LOCAL_RANK", None)
        if hub:
            with self.lock:  # one Hub per job, whichever of its commands asks first
                if job.hub is None:
                    job.hub = HubServer(job.folder / "hub", tokens={TOKEN: HUB_USER}).start()
                    self.hubs.append(job.hub)
            env.update(HF_ENDPOINT=job.hub.url, HF_HUB_OFFLINE="0", HF_TOKEN=TOKEN)
        return env

    def note(self, asked: float, began: float, what: str) -> None:
        """A line of the timeline the test prints: when a subprocess started, how long it waited and ran."""
        now = time.monotonic()
        with self.lock:
            self.log.append(
                f"{began - self.started:5.1f} s +{now - began:5.1f} s (waited {began - asked:4.1f} s)  {what}"
            )

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)

    # -------------------------------------------------------------------------------------------- one command
    def run_command(self, job: Job, command: Command, activated: bool) -> bool:
        where = f"README.md:{command.line}"
        runner = runner_of(command)
        words = transformed(command)
        prefix = f"{ACTIVATE} && " if activated and runner != "activate" else ""
        env = self.env(job, hub_command(command.text))
        if runner == "activate":
            script = f"{ACTIVATE} && command -v anime-ddpm python accelerate"
        else:
            script = prefix + "exec " + shlex.join(words)
        if runner == "serve":
            return self.serve(job, command, script, env)
        start = time.monotonic()
        with self.slots.take(priority(command, job)):
            began = time.monotonic()
            result = subprocess.run(["bash", "-c", script], cwd=job.folder, env=env, capture_output=True, text=True,
                                    timeout=300)  # fmt: skip
        self.note(start, began, f"{job.name}: {shlex.join(words)[:120]}")
        output = result.stdout + result.stderr
        if refuses(command, job):  # the README: a second `make train` refuses in one sentence, offering the way on
            expected = ("already holds a previous run's", "--resume_from_checkpoint latest", "--overwrite_output_dir")
            if result.returncode == 0 or not all(e in output for e in expected) or "Traceback" in output:
                self.fail(f"{where}: `{command.text}` should refuse in one sentence, got (rc {result.returncode}):\n{output[-2000:]}")  # fmt: skip
            return True
        if result.returncode != 0:
            self.fail(
                f"{where}: `{command.text}` failed (rc {result.returncode}), run as `{script}`:\n{output[-3000:]}"
            )
            return False
        self.check_results(job, command, words, output)
        return True

    def serve(self, job: Job, command: Command, script: str, env: dict[str, str]) -> bool:
        """`anime-ddpm demo MODEL`: it must serve the page; then SIGTERM stops it, as Ctrl+C would."""
        where = f"README.md:{command.line}"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        script += f" --port {port}"
        start = time.monotonic()
        with self.slots.take(priority(command, job)):
            began = time.monotonic()
            process = subprocess.Popen(["bash", "-c", script], cwd=job.folder, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)  # fmt: skip
            served = False
            # From its own start, not from the wait for a slot (a busy machine once spent the 120 s waiting).
            while time.monotonic() - began < 120 and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                        served = response.status == 200
                        break
                except OSError:
                    time.sleep(0.25)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
        self.note(start, began, f"{job.name}: {script[:120]} (served: {served})")
        # SIGTERM stops it as Ctrl+C does: 0 once the server runs, 130 ("interrupted") while it is still starting up
        if not served or process.returncode not in (0, 130) or "Traceback" in output:
            self.fail(f"{where}: `{command.text}` did not serve its page and stop on SIGTERM (served: {served}, rc {process.returncode}):\n{output[-2000:]}")  # fmt: skip
        return served

    def check_results(self, job: Job, command: Command, words: list[str], output: str) -> None:
        """What the README says the command leaves behind."""
        where = f"README.md:{command.line}"
        folder = job.folder
        run_dir = output_dir_of(command)
        if run_dir:
            run = folder / run_dir
            for name in ("model_index.json", "samples.png", "README.md", "pipeline.py", "metrics.jsonl", "summary.json",
                         "logs", "checkpoint-2"):  # fmt: skip
                if not (run / name).exists():
                    self.fail(f"{where}: `{command.text}` left no {run_dir}/{name}")
            if (run / "summary.json").exists():
                summary = json.loads((run / "summary.json").read_text())
                missing = {"steps", "images_per_sec", "mixed_precision", "device", "cpu_threads"} - set(summary)
                if missing:
                    self.fail(f"{where}: summary.json lacks {sorted(missing)}")
            if not re.search(r"Trained \d+ steps[ ,].* CPU thread", output):
                self.fail(
                    f"{where}: `{command.text}` printed no closing line with steps and threads:\n{output[-1500:]}"
                )
            if "--push_to_hub" in command.text:
                repo = transformed(command)[-1].split("--hub_model_id ")[1].split()[0]
                self.check_pushed(job, repo, where)
        for flag in ("--output", "--gif", "--save-individual", "--export-space"):
            value = option_value(words, flag)
            if value and not (folder / value).exists():
                self.fail(f"{where}: `{command.text}` wrote no {value}")
        code = " ".join(command.words)
        if "push_to_hub(" in code:
            repo = re.search(r"'(your-name/[^']+)'", code).group(1).replace("your-name/", f"{HUB_USER}/")
            self.check_pushed(job, repo, where)

    def check_pushed(self, job: Job, repo: str, where: str) -> None:
        files = job.hub.files(repo) if job.hub is not None and job.hub.head(repo) else {}
        if not {"model_index.json", "README.md", "samples.png", "pipeline.py"} <= set(files):
            self.fail(f"{where}: {repo} on the test Hub holds {sorted(files)}")
        if any(
            name.startswith(("checkpoint-", "logs/")) or name in ("metrics.jsonl", "summary.json") for name in files
        ):
            self.fail(f"{where}: checkpoints or logs reached the Hub: {sorted(files)}")

    # -------------------------------------------------------------------------------------------- one job
    def run_job(self, job: Job) -> None:
        for needed in sorted(job.needs):
            if not self.made[needed].wait(timeout=400):
                self.fail(f"{job.name}: {needed} was never made")
                return
            if not (self.made_in[needed] / needed).is_dir():
                self.fail(f"{job.name}: {needed} was never made")
                return
            if self.made_in[needed] != job.folder:
                shutil.copytree(self.made_in[needed] / needed, job.folder / needed, symlinks=True)
        if job.script is not None:
            self.run_python(job)
            return
        activated = job.activated
        try:
            index = 0
            while index < len(job.commands):
                command = job.commands[index]
                if not_run_reason(command):
                    index += 1
                    continue
                if runner_of(command) in READERS:  # it and the readers after it run side by side
                    group = []
                    while index < len(job.commands) and (
                        not_run_reason(job.commands[index]) or runner_of(job.commands[index]) in READERS
                    ):
                        if not not_run_reason(job.commands[index]):
                            group.append(job.commands[index])
                        index += 1
                    with ThreadPoolExecutor(max_workers=len(group)) as pool:
                        list(pool.map(self.run_command, [job] * len(group), group, [activated] * len(group)))
                    continue
                if not self.run_command(job, command, activated):
                    return
                activated = activated or command.text == ACTIVATE
                for run_dir, producer in job.produces.items():
                    if producer is command:
                        self.made_in[run_dir] = job.folder
                        self.made[run_dir].set()
                index += 1
        finally:
            for run_dir in job.produces:
                self.made[run_dir].set()  # failed: let the others go (they fail on the missing folder)
                self.made_in.setdefault(run_dir, job.folder)

    def run_python(self, job: Job) -> None:
        env = self.env(job, hub=job.hub is not None or hub_command(job.script))
        script = job.script.replace("your-name/", f"{HUB_USER}/")
        start = time.monotonic()
        with self.slots.take(2):
            began = time.monotonic()
            result = subprocess.run([str(VENV / "bin" / "python"), "-c", script], cwd=job.folder, env=env,
                                    capture_output=True, text=True, timeout=300)  # fmt: skip
        self.note(start, began, job.name)
        if result.returncode != 0:
            done = re.findall(r"^README block (\S+) ok$", result.stdout, re.M)
            self.fail(f"{job.name} failed after the blocks {done}:\n{result.stderr[-3000:]}")


def refuses(command: Command, job: Job) -> bool:
    """A new run into a folder that another block's run left: it must refuse (neither resume nor overwrite)."""
    train_args = make_variables(command.words).get("TRAIN_ARGS", "") if command.words[:2] == ["make", "train"] else ""
    new_run = "--overwrite_output_dir" not in train_args and "--resume_from_checkpoint" not in train_args
    return output_dir_of(command) in job.needs and new_run


def python_session(blocks: list[Block], claims: str = "") -> str:
    """The README's Python blocks as one session, as a reader would run them one after the other: tiny step and
    batch counts, and `expr  # [literal]` lines turned into assertions."""
    parts = ["import warnings; warnings.filterwarnings('ignore')"]
    for block in blocks:
        code = re.sub(r"num_inference_steps=\d+", "num_inference_steps=2", block.code)
        code = re.sub(r"batch_size=\d+", "batch_size=2", code)
        code = re.sub(r"^([\w.]+)  # (\[.*\])$", r"assert \1 == \2, (\1, \2)", code, flags=re.M)
        parts.append(f"# --- {block.where}\n{code}print('README block {block.where} ok', flush=True)")
    return "\n".join(parts) + textwrap.dedent(claims)


# What the README says about loading that is no block of its own: plain DiffusionPipeline.from_pretrained fails.
LOADING_CLAIM = """
try:
    DiffusionPipeline.from_pretrained(repo)
except AttributeError as error:
    assert "has no attribute AnimeDDPMPipeline" in str(error), error
else:
    raise AssertionError("README: plain DiffusionPipeline.from_pretrained(repo) loads after all: update the README")
"""


def names(text: str, run_dir: str) -> bool:
    """Whether `text` names the folder `run_dir` (not merely a longer name that starts like it)."""
    return re.search(re.escape(run_dir) + r"(?![\w-])", text) is not None


def plan_jobs(runner: Runner) -> list[Job]:
    jobs = []
    producers: dict[str, str] = {}
    for number, block in enumerate(bash_blocks(), 1):
        job = Job(f"bash block {number} ({block.where})", Path(), commands_of(block))
        runnable = [c for c in job.commands if not not_run_reason(c)]
        if not runnable:
            continue
        for command in job.commands:
            run_dir = output_dir_of(command)
            if run_dir and not not_run_reason(command) and run_dir not in job.produces:
                if run_dir in producers:  # trained by an earlier block: this one starts from a copy of it
                    job.needs.add(run_dir)
                else:
                    job.produces[run_dir] = command
                    producers[run_dir] = job.name
        jobs.append(job)
        for command in [c for c in job.commands if refuses(c, job)]:  # it changes nothing: run it on a copy, aside
            job.commands.remove(command)
            jobs.append(Job(f"{job.name}, line {command.line}", Path(), [command], needs={output_dir_of(command)}))
    for job in jobs:  # anything else that names a run folder waits for it
        job.needs |= {
            d for d in producers if names(" ".join(c.text for c in job.commands), d) and d not in job.produces
        }
    if jobs:
        jobs[0].activated = False  # the quick start: .venv is not on the PATH until its `source .venv/bin/activate`
    sessions = {"local": [b for b in python_blocks() if not hub_command(b.code)],
                "hub": [b for b in python_blocks() if hub_command(b.code)]}  # fmt: skip
    for name, blocks in sessions.items():
        if blocks:
            script = python_session(blocks, LOADING_CLAIM if name == "hub" else "")
            job = Job(f"python session '{name}' ({', '.join(b.where for b in blocks)})", Path(), script=script)
            job.needs = {d for d in producers if names(script, d)}
            jobs.append(job)
    for index, job in enumerate(jobs):
        job.folder = runner.clone(f"job{index}")
        if job.script is not None and hub_command(job.script):
            runner.env(job, hub=True)  # starts its Hub
    runner.made = {d: threading.Event() for d in producers}
    return jobs


@pytest.mark.slow
def test_readme_blocks_run(tmp_path):
    runner = Runner(tmp_path)
    jobs = plan_jobs(runner)
    assert any(job.produces for job in jobs), "no README block trains a model"
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            for future in [pool.submit(runner.run_job, job) for job in jobs]:
                future.result()
    finally:
        for hub in runner.hubs:
            hub.stop()
    print(f"README blocks: {len(jobs)} jobs in {time.monotonic() - start:.0f} s", *sorted(runner.log), sep="\n")
    assert not runner.failures, "\n\n".join(runner.failures)
    local = next(job for job in jobs if job.script is not None and job.hub is None)
    assert (local.folder / "face.png").is_file(), "the Python example saves face.png"


def test_readme_links_and_images_exist():
    text = README.read_text()
    for target in re.findall(r"\]\(((?:docs|bench|tests)/[^)#]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


@functools.cache
def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens, -1 on repeats."""
    anchors, seen, in_fence = set(), {}, False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        heading = None if in_fence else re.match(r"#{1,6} +(.+?) *$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_readme_and_docs_anchors_exist():
    """A link to a section (page.md#section) lands on a heading: renamed sections do not leave dead links."""
    for page in (README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"):
        for target, fragment in re.findall(r"\]\(([^)#:\s]*)#([^)\s]+)\)", page.read_text()):
            linked = page.parent / target if target else page
            if linked.suffix == ".md":
                assert fragment in heading_anchors(linked), (
                    f"{page.name} links to {target}#{fragment}: no such heading"
                )


def test_first_screen_has_the_quick_start():
    """The first screen takes a new user from the clone to samples, the Hub and the demo."""
    first = "\n".join(README.read_text().splitlines()[:60])
    for step in ("make train", ACTIVATE, "anime-ddpm sample", "samples.png", "push_to_hub", "anime-ddpm demo",
                 "make test", "531 steps", "4890 steps", "--max_train_time"):  # fmt: skip
        assert step in first, f"the README's first 60 lines do not mention {step!r}"
