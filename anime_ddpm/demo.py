"""The Gradio app behind `anime-ddpm demo MODEL` and the Hugging Face Space that `--export-space DIR` writes.

One request is (number of images, seed, scheduler, steps[, domain, guidance scale]). It is checked against the same
bounds the page's sliders enforce, then sampled with `sampling.iter_batches`, so image i uses the seed `seed + i` and
the page gives exactly the grid `anime-ddpm sample MODEL --seed S --scheduler NAME --steps N --num K` writes.
While the pipeline runs (in a worker thread, fed by `callback_on_step_end`) the page shows x_t and the predicted x_0
every few steps; at the end it shows the grid and offers it as a PNG download.

gradio is optional (`pip install "anime-ddpm[demo]"`): this module imports it only when a demo is built, and
torch and diffusers only when a model is loaded or sampled, so that `anime-ddpm --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .network import is_repo_id


if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .pipeline import AnimeDDPMPipeline


logger = logging.getLogger(__name__)

SCHEDULER_CHOICES = ("ddpm", "ddim", "dpm++", "euler", "unipc")
DEFAULT_SCHEDULER = "dpm++"
UNCONDITIONAL = "any (unconditional)"
INSTALL_HINT = (
    'The demo needs gradio: install it with `pip install -e ".[demo]"` in the anime-ddpm clone (or `make setup`).'
)
GRADIO_VERSION = "6.31.0"  # the version the demo is tested with; also the Space's sdk_version when gradio is absent
BATCH_SIZE = 16  # `anime-ddpm sample`'s default --batch-size: the same batches give bit-identical images
# No web fonts: the page must render the same offline (and in tests, where Google Fonts is unreachable).
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]
# Samples are small (32-128 px): scale them up to the box, without blurring the pixels.
CSS = """
#x_t img, #x_0 img, #result img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""


class DemoError(ValueError):
    """A request the demo refuses, with one sentence for the page."""


def require_gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return gradio


# ----------------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Limits:
    """The bounds the page's controls enforce, checked again by the server."""

    max_images: int = 16
    max_steps: int = 1000
    max_seed: int = 2**31 - 1
    max_guidance: float = 10.0


@dataclass(frozen=True)
class Request:
    num_images: int
    seed: int
    scheduler: str
    steps: int
    domain: str | None = None
    guidance_scale: float = 1.0


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoError(f"Enter a value for {name} (a whole number from {low} to {high}).")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name.capitalize()} must be a whole number from {low} to {high}, got {value!r}.") from None
    if not math.isfinite(number) or not number.is_integer() or not low <= number <= high:
        raise DemoError(f"{name.capitalize()} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def _float(name: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name.capitalize()} must be a number from {low:g} to {high:g}, got {value!r}.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise DemoError(f"{name.capitalize()} must be a number from {low:g} to {high:g}, got {value!r}.")
    return number


# ----------------------------------------------------------------------------------------------------- images
def grid_image(images: torch.Tensor) -> Image.Image:
    """The grid `anime-ddpm sample` saves (viz.make_grid at scale 1): the page's result and its PNG download."""
    from .viz import make_grid

    return make_grid(images)


def _preview(tensor: torch.Tensor, scale: float = 1.0) -> Image.Image:
    return grid_image((tensor.detach().float().cpu().nan_to_num() * scale / 2 + 0.5).clamp(0, 1))


# ----------------------------------------------------------------------------------------------------- sampler
class _Cancelled(Exception):
    pass


@dataclass
class Event:
    """What the page shows next: a preview of step `step` of `total`, or the finished grid (`images` set)."""

    text: str
    x_t: Image.Image | None = None
    x_0: Image.Image | None = None
    images: torch.Tensor | None = None


class DemoSampler:
    """The model behind the page: checks requests and streams their reverse process. Usable without gradio."""

    def __init__(self, pipe: AnimeDDPMPipeline, limits: Limits | None = None, max_previews: int = 20):
        self.pipe = pipe
        train_steps = int(pipe.scheduler.config.num_train_timesteps)
        limits = limits or Limits()
        self.limits = Limits(
            max_images=limits.max_images,
            max_steps=min(limits.max_steps, train_steps),
            max_seed=limits.max_seed,
            max_guidance=limits.max_guidance,
        )
        self.max_previews = max(1, max_previews)

    @property
    def domains(self) -> list[str]:
        return self.pipe.domains

    def max_steps(self, scheduler: str) -> int:
        from .schedulers import max_inference_steps

        cap = max_inference_steps(scheduler, int(self.pipe.scheduler.config.num_train_timesteps))
        return max(1, min(self.limits.max_steps, cap))

    def default_steps(self, scheduler: str) -> int:
        from .sampling import default_steps

        return max(1, min(default_steps(scheduler), self.max_steps(scheduler)))

    def parse(
        self,
        num_images: Any,
        seed: Any,
        scheduler: Any,
        steps: Any,
        domain: Any = None,
        guidance_scale: Any = 1.0,
    ) -> Request:
        """A checked request, or a DemoError that says what to change."""
        limits = self.limits
        num_images = _integer("the number of images", num_images, 1, limits.max_images)
        seed = _integer("the seed", seed, 0, limits.max_seed)
        if scheduler not in SCHEDULER_CHOICES:
            raise DemoError(f"Unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULER_CHOICES)}.")
        steps = _integer("the number of steps", steps, 1, limits.max_steps)
        if steps > self.max_steps(scheduler):
            raise DemoError(
                f"{scheduler} takes at most {self.max_steps(scheduler)} steps with this model, got {steps}."
            )
        if domain in (None, "", UNCONDITIONAL):
            domain = None
        elif domain not in self.domains:
            known = ", ".join(self.domains) if self.domains else "none: this model is unconditional"
            raise DemoError(f"Unknown domain {domain!r}; this model's domains are {known}.")
        guidance_scale = (
            1.0 if domain is None else _float("the guidance scale", guidance_scale, 0.0, limits.max_guidance)
        )
        return Request(num_images, seed, scheduler, steps, domain, guidance_scale)

    def stream(self, request: Request) -> Iterator[Event]:
        """Previews every few steps, then one Event with all images; runs the pipeline in a worker thread."""
        import torch

        from .pipeline import display_scale
        from .sampling import iter_batches, with_scheduler

        pipe = with_scheduler(self.pipe, request.scheduler)
        pipe.set_progress_bar_config(disable=True)
        every = max(1, math.ceil(request.steps / self.max_previews))
        num_batches = -(-request.num_images // BATCH_SIZE)
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        state = {"batch": 0}
        start = time.monotonic()

        def callback(pipeline, step, timestep, tensors):
            if stop.is_set():
                raise _Cancelled
            total = pipeline.num_timesteps
            if step == 0:
                state["batch"] += 1
            if step % every == 0 or step == total - 1:
                x_t = _preview(tensors["latents"], display_scale(pipeline.scheduler, step))
                x_0 = _preview(tensors["pred_original_sample"])
                batch = f"batch {state['batch']}/{num_batches}, " if num_batches > 1 else ""
                text = (
                    f"Sampling {request.num_images} image(s) with {request.scheduler}: {batch}"
                    f"step {step + 1}/{total} (t={int(timestep)}), {time.monotonic() - start:.1f} s"
                )
                events.put(Event(text, x_t, x_0))
            return {}

        callback.tensor_inputs = ["latents", "pred_original_sample"]

        def work():
            try:
                batches = iter_batches(
                    pipe,
                    request.num_images,
                    seed=request.seed,
                    batch_size=BATCH_SIZE,
                    num_inference_steps=request.steps,
                    callback_on_step_end=callback,
                    domain=request.domain,
                    guidance_scale=request.guidance_scale,
                )
                images = torch.cat(list(batches))
                events.put(Event(f"Done: {len(images)} image(s) in {time.monotonic() - start:.1f} s.", images=images))
            except _Cancelled:
                events.put(None)
            except Exception as error:  # noqa: BLE001 - handed to the page as one sentence
                events.put(error)

        worker = threading.Thread(target=work, name="anime-ddpm-demo-sampler", daemon=True)
        worker.start()
        try:
            while True:
                items = [events.get()]
                while not events.empty():
                    items.append(events.get())
                # Drop previews the page has not had time to show: only the newest one matters. The last step's
                # preview is still shown before the result.
                previews = [item for item in items if isinstance(item, Event) and item.images is None]
                if previews:
                    yield previews[-1]
                if len(previews) == len(items):
                    continue
                item = next(item for item in items if not (isinstance(item, Event) and item.images is None))
                if item is None:
                    return
                if isinstance(item, Exception):
                    if isinstance(item, ValueError):
                        raise DemoError(str(item)) from item
                    logger.error("Sampling failed", exc_info=item)
                    raise DemoError(f"Sampling failed ({type(item).__name__}: {item}).") from item
                yield item
                return
        finally:
            stop.set()  # a closed page or an error stops the worker at its next step


# ----------------------------------------------------------------------------------------------------- the app
def _describe(pipe: AnimeDDPMPipeline, model_name: str, model_ref: str) -> str:
    config = pipe.unet.config
    size = config.sample_size
    size = f"{size}x{size}" if isinstance(size, int) else "x".join(map(str, size))
    params = sum(p.numel() for p in pipe.unet.parameters())
    params = f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params / 1e3:.0f}k"
    diffusion_steps = pipe.scheduler.config.num_train_timesteps  # T of the noise schedule, not optimiser steps
    extra = f", domains: {', '.join(pipe.domains)}" if pipe.domains else ""
    domain = " [--domain D --guidance-scale G]" if pipe.domains else ""
    return (
        f"# anime-ddpm: {model_name}\n"
        f"A denoising diffusion model ({params} parameters, {size} px, T = {diffusion_steps} diffusion steps{extra}). "
        "Pick a seed, a sampler and a number of steps, and watch the reverse process turn noise into faces: "
        "**x_t** is the current noisy sample, **predicted x_0** the model's guess of the final image. The same settings "
        f"give the grid of `anime-ddpm sample {model_ref} --seed S --scheduler NAME --steps N --num K{domain}`."
    )


def _prune(folder: Path, max_age_s: float):
    """Removes the image files of requests older than `max_age_s` (gradio serves its own copies from its cache)."""
    now = time.time()
    for request_dir in folder.iterdir():
        try:
            if now - request_dir.stat().st_mtime > max_age_s:
                shutil.rmtree(request_dir, ignore_errors=True)
        except OSError:
            pass


def _open_pipeline(model_or_pipe: str | os.PathLike | AnimeDDPMPipeline, title: str | None, device: str | None):
    """(pipeline, name for the page's title, reference for its command lines)."""
    from .pipeline import AnimeDDPMPipeline
    from .sampling import load_pipeline

    if isinstance(model_or_pipe, AnimeDDPMPipeline):
        return model_or_pipe, title or "model", "MODEL"
    model_ref = os.fspath(model_or_pipe)
    model_name = title or (Path(model_ref).resolve().name if os.path.isdir(model_ref) else model_ref)
    return load_pipeline(model_ref, device=device), model_name, model_ref


def _request_events(gr, sampler: DemoSampler, out_dir: Path, values: tuple) -> Iterator[tuple]:
    """The page's outputs (x_t, x_0, status, result, download) for one request, as files under `out_dir`."""
    request = sampler.parse(*values)
    yield None, None, f"Starting: seed {request.seed}, {request.scheduler}, {request.steps} steps.", None, None
    # The page gets files, each under its own name: given PIL images gradio writes them to cache/<hash>/image.png,
    # and identical images (x_t, x_0 and the result at the last step) rewrite one file while the browser is still
    # reading it.
    _prune(out_dir, max_age_s=3600)
    request_dir = Path(tempfile.mkdtemp(dir=out_dir))
    for n, event in enumerate(sampler.stream(request)):
        if event.images is None:
            x_t_path, x_0_path = request_dir / f"x_t_{n:04d}.png", request_dir / f"x_0_{n:04d}.png"
            event.x_t.save(x_t_path)
            event.x_0.save(x_0_path)
            yield str(x_t_path), str(x_0_path), event.text, gr.skip(), gr.skip()
            continue
        name = f"anime-ddpm_seed{request.seed}_{request.scheduler}_{request.steps}steps_{request.num_images}.png"
        path = request_dir / name.replace("+", "p")
        grid_image(event.images).save(path)
        yield gr.skip(), gr.skip(), event.text, str(path), str(path)


def _preview_box(gr, label: str, elem_id: str):
    return gr.Image(label=label, format="png", height=220, interactive=False, buttons=["fullscreen"], elem_id=elem_id)


def build_demo(
    model_or_pipe: str | os.PathLike | AnimeDDPMPipeline,
    *,
    title: str | None = None,
    limits: Limits | None = None,
    max_previews: int = 20,
    device: str | None = None,
):
    """The demo page (a `gr.Blocks`, queued one request at a time) for a saved pipeline, Hub repo id or pipeline.

    Run it with `launch(demo)`; a Hugging Face Space's app.py calls this function with the model's repo id. The
    images it serves live in a temporary folder that goes with the demo (at the latest when the process exits).
    """
    gr = require_gradio()
    pipe, model_name, model_ref = _open_pipeline(model_or_pipe, title, device)
    pipe.set_progress_bar_config(disable=True)
    sampler = DemoSampler(pipe, limits, max_previews=max_previews)
    lim = sampler.limits

    with gr.Blocks(title=f"anime-ddpm: {model_name}", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        with gr.Column(elem_id="anime-ddpm-demo"):
            gr.Markdown(_describe(pipe, model_name, model_ref))
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    num_images = gr.Slider(
                        1, lim.max_images, value=min(4, lim.max_images), step=1, label="Images", elem_id="num_images"
                    )
                    seed = gr.Number(
                        value=0, precision=0, minimum=0, maximum=lim.max_seed, label="Seed", elem_id="seed"
                    )
                    scheduler = gr.Dropdown(
                        list(SCHEDULER_CHOICES), value=DEFAULT_SCHEDULER, label="Scheduler", elem_id="scheduler"
                    )
                    steps = gr.Slider(
                        1,
                        sampler.max_steps(DEFAULT_SCHEDULER),
                        value=sampler.default_steps(DEFAULT_SCHEDULER),
                        step=1,
                        label="Steps",
                        elem_id="steps",
                    )
                    inputs = [num_images, seed, scheduler, steps]
                    if sampler.domains:
                        domain = gr.Dropdown(
                            [UNCONDITIONAL, *sampler.domains], value=sampler.domains[0], label="Domain"
                        )
                        guidance = gr.Slider(
                            0, lim.max_guidance, value=1.0, step=0.1, label="Guidance scale (1 = none)"
                        )
                        inputs += [domain, guidance]
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    status = gr.Markdown("Ready.", elem_id="status")
                with gr.Column(scale=2):
                    with gr.Row():
                        x_t = _preview_box(gr, "x_t", "x_t")
                        x_0 = _preview_box(gr, "predicted x_0", "x_0")
                    result = gr.Image(
                        label="Result",
                        format="png",
                        height=320,
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id="result",
                    )
                    download = gr.File(label="Download PNG", interactive=False, elem_id="download")

        def sample(*values):
            try:
                yield from _request_events(gr, sampler, out_dir, values)
            except DemoError as error:
                # The message stays in the status box and pops up as a toast (and is the API's "error"); the app
                # carries on serving.
                yield gr.skip(), gr.skip(), f"**Not sampled:** {error}", gr.skip(), gr.skip()
                raise gr.Error(str(error), title="Cannot sample", print_exception=False) from None
            except OSError as error:
                logger.error("Could not write the images", exc_info=error)
                raise gr.Error(f"Could not write the images ({error}).", title="Cannot sample") from None

        def on_scheduler(name):
            if not isinstance(name, str) or name not in SCHEDULER_CHOICES:
                return gr.skip()
            return gr.update(value=sampler.default_steps(name), maximum=sampler.max_steps(name))

        scheduler.change(on_scheduler, scheduler, steps, queue=False, show_progress="hidden")
        # preprocess=False: the values reach `sampler.parse` as sent, so that every malformed or out-of-range API
        # call gets the demo's own sentence (gradio's component checks answer some with {"error": null}) and the
        # bounds are the sampler's for each scheduler, not those the sliders were built with.
        button.click(
            sample,
            inputs,
            [x_t, x_0, status, result, download],
            api_name="generate",
            concurrency_limit=1,
            show_progress="minimal",
            preprocess=False,
        )
    demo.queue(default_concurrency_limit=1)
    demo.sampler = sampler
    out_dir = Path(tempfile.mkdtemp(prefix="anime-ddpm-demo-"))  # read by `sample` when a request comes
    weakref.finalize(demo, shutil.rmtree, out_dir, ignore_errors=True)
    return demo


def theme():
    gr = require_gradio()
    return gr.themes.Default(font=_FONTS, font_mono=_MONO_FONTS)


def launch(demo, host: str | None = None, port: int | None = None, **kwargs: Any):
    """Serve a demo from `build_demo` with the page's theme and styles (gradio 6 takes them at launch).

    `host`/`port` default to gradio's own defaults (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Spaces set).
    """
    kwargs.setdefault("theme", theme())
    kwargs.setdefault("css", CSS)
    kwargs.setdefault("footer_links", ["api"])
    try:
        return demo.launch(server_name=host, server_port=port, **kwargs)
    except KeyboardInterrupt:  # Ctrl+C before gradio's own wait began: its server thread would keep the process alive
        demo.close()
        raise


# ----------------------------------------------------------------------------------------------------- Space export
APP_TEMPLATE = '''"""Hugging Face Space for {model_id}: the same app as `anime-ddpm demo {model_id}`."""

from anime_ddpm.demo import build_demo, launch


demo = build_demo("{model_id}")

if __name__ == "__main__":
    launch(demo)
'''

README_TEMPLATE = """---
title: {title}
emoji: 🌸
colorFrom: pink
colorTo: indigo
sdk: gradio
sdk_version: {sdk_version}
app_file: app.py
pinned: false
license: apache-2.0
models:
  - {model_id}
short_description: Sample a DDPM and watch the reverse diffusion process
---

# {title}

Samples the denoising diffusion model [{model_id}](https://huggingface.co/{model_id}) and shows the reverse process
as it runs: x_t and the predicted x_0 every few steps, then the grid as a PNG.

The app is `anime_ddpm.demo.build_demo` from the anime-ddpm package: the same page as `anime-ddpm demo {model_id}`
on your own machine, and the same seed and settings give the same grid as `anime-ddpm sample {model_id}`. Exported with `anime-ddpm demo {model_id} --export-space DIR`.
"""


# What the demo's part of the package imports, for a Space that carries the package instead of installing it.
SPACE_REQUIREMENTS = ("diffusers", "huggingface_hub", "safetensors", "pillow", "numpy")


def export_space(model_id: str, out_dir: str | os.PathLike, package: str | None = None) -> Path:
    """Writes a Hugging Face Space (app.py, requirements.txt, README.md) that serves the demo for a Hub model.

    With `package` (a pip requirement, e.g. a git URL) the Space installs anime-ddpm; without, it carries a copy of
    the package next to app.py."""
    # A namespace too: the Space's README names the model as namespace/name, and a bare name reads like a folder.
    if "/" not in model_id or not is_repo_id(model_id) or os.path.isdir(model_id):
        raise DemoError(
            f"A Space loads its model from the Hub, so --export-space needs a repo id like user/ddpm-anime, not "
            f"{model_id!r}: push the model first (anime-ddpm's --push_to_hub)."
        )
    try:
        import gradio

        sdk_version = gradio.__version__
    except ImportError:
        sdk_version = GRADIO_VERSION
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if package is None:  # no index has anime-ddpm: the Space carries the package itself, next to app.py
        vendored = out / "anime_ddpm"
        shutil.rmtree(vendored, ignore_errors=True)
        shutil.copytree(Path(__file__).parent, vendored, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        requirements = SPACE_REQUIREMENTS
    else:
        requirements = [package]
    (out / "app.py").write_text(APP_TEMPLATE.format(model_id=model_id))
    (out / "requirements.txt").write_text(
        "# CPU torch: a free Space has no GPU, and the CPU wheels are a tenth of the size.\n"
        "--extra-index-url https://download.pytorch.org/whl/cpu\n"
        "torch\n" + "".join(f"{line}\n" for line in requirements) + f"gradio=={sdk_version}\n"
    )
    title = model_id.split("/")[-1]
    (out / "README.md").write_text(README_TEMPLATE.format(title=title, model_id=model_id, sdk_version=sdk_version))
    return out


# ----------------------------------------------------------------------------------------------------- command line
def _port(text: str) -> int:
    """A TCP port, checked when the command line is parsed rather than by the server after the model is loaded."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return port


def check_port_free(host: str, port: int) -> None:
    """Fail before the model is loaded when the server could not listen on host:port (taken, or not an address)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is free
            sock.bind(address)
    except OSError as error:
        reason = error.strerror or str(error)
        raise DemoError(f"Cannot listen on {host}:{port} ({reason}): choose another --port or --host.") from None


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, docker stop, systemd) stops the server as Ctrl+C does, so that the exit handlers run and
    remove the demo's temporary files; by default it would end the process without them."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `demo` to the `anime-ddpm` subcommands; the command's function is `run(args)`."""
    parser = subparsers.add_parser(
        "demo",
        help="serve a web demo that samples a model and shows the denoising (needs anime-ddpm[demo])",
        description="Serve a Gradio page that samples MODEL and streams the reverse process, or export it as a Space.",
    )
    parser.add_argument("model", help="a folder written by training or save_pretrained, or a Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=7860, help="port to listen on, 1-65535 (default: %(default)s)")
    parser.add_argument(
        "--export-space",
        metavar="DIR",
        default=None,
        help="instead of serving, write a Hugging Face Space (app.py, requirements.txt, README.md) for the repo id",
    )
    parser.add_argument(
        "--package",
        default=None,
        help="a pip requirement for anime-ddpm, e.g. 'anime-ddpm @ git+https://...' (default: the Space carries a copy of the package)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """`anime-ddpm demo`: returns the exit status (1 with one sentence on stderr for a user error, as the CLI does)."""
    try:
        if args.export_space:
            out = export_space(args.model, args.export_space, package=getattr(args, "package", None))
            print(
                f"Wrote a Hugging Face Space for {args.model} to {out}: upload it with `hf upload --repo-type space`."
            )
            return 0
        require_gradio()
        check_port_free(args.host, args.port)
        _stop_on_sigterm()
        demo = build_demo(args.model)
        url_host = "localhost" if args.host in ("0.0.0.0", "::") else args.host
        print(f"Serving the anime-ddpm demo of {args.model} at http://{url_host}:{args.port}/ (Ctrl+C stops it).")
        launch(demo, host=args.host, port=args.port)
    except (ImportError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"anime-ddpm demo: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # python -m anime_ddpm.demo MODEL [...]
    _parser = argparse.ArgumentParser(prog="python -m anime_ddpm.demo")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    sys.exit(run(_parser.parse_args(["demo", *sys.argv[1:]])))
