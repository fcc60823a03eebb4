"""The web demo, driven in a real browser (Debian chromium + chromium-driver via Selenium) against a tiny model.

`make test` installs what these tests need (scripts/ensure_chromium.sh, the [demo] and [browser] extras). A missing
browser or package fails the tests with one sentence on how to install it; set ANIME_DDPM_SKIP_BROWSER_TESTS=1 to skip
them knowingly. ANIME_DDPM_DEMO_SCREENSHOT=docs/demo.png refreshes the README's screenshot (with
ANIME_DDPM_DEMO_MODEL=folder-or-repo to show a trained model instead of the untrained tiny one).
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from anime_ddpm import demo as demo_module
from anime_ddpm.demo import DemoError, DemoSampler, export_space, grid_image
from anime_ddpm.models import build_unet
from anime_ddpm.pipeline import AnimeDDPMPipeline
from anime_ddpm.sampling import generate, load_pipeline, with_scheduler


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
TIMEOUT = 60


def _browser_stack_problem() -> str | None:
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f'{module} is missing: install it with pip install -e ".[test,demo,browser]" (or run make test).'
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return (
            f"Chromium or its driver is missing ({CHROMIUM}, {CHROMEDRIVER}): install them with "
            "sudo bash scripts/ensure_chromium.sh (Debian/Ubuntu: apt-get install chromium chromium-driver)."
        )
    return None


def _require_browser_stack(problem: str | None = None):
    problem = problem or _browser_stack_problem()
    if problem is None:
        return
    if os.environ.get("ANIME_DDPM_SKIP_BROWSER_TESTS") == "1":
        pytest.skip(f"ANIME_DDPM_SKIP_BROWSER_TESTS=1 and {problem}")
    pytest.fail(problem, pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("demo-model")
    AnimeDDPMPipeline(unet=build_unet("tiny", 16), scheduler=DDPMScheduler()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir):
    """What `anime-ddpm sample` computes: sampling.generate on the saved model, as the page's grid."""
    pipe = load_pipeline(str(model_dir), device="cpu")

    def grid(num_images: int, seed: int, scheduler: str, steps: int) -> np.ndarray:
        sampler = with_scheduler(pipe, scheduler)
        sampler.set_progress_bar_config(disable=True)
        images = generate(sampler, num_images, seed=seed, batch_size=16, num_inference_steps=steps)
        return np.asarray(grid_image(images))

    return grid


def _serve(model: str, title: str | None = None):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = demo_module.build_demo(model, title=title)
    port = _free_port()
    demo_module.launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def server(model_dir):
    _require_browser_stack()
    app, url = _serve(str(model_dir))
    yield url
    app.close()


@pytest.fixture(scope="module")
def browser():
    _require_browser_stack()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="anime-ddpm-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------- page helpers
def _by():
    from selenium.webdriver.common.by import By

    return By


def _open(driver, url):
    driver.get(url)
    _wait(driver, lambda: driver.find_elements(_by().ID, "generate"), "the page to load")
    # Record every src the preview images take (the page may change them faster than we could poll).
    driver.execute_script(
        """
        window.seen = {x_t: [], x_0: []};
        const observer = new MutationObserver(() => {
          for (const id of ['x_t', 'x_0']) {
            const img = document.querySelector('#' + id + ' img');
            const seen = window.seen[id];
            if (img && img.src && seen[seen.length - 1] !== img.src) seen.push(img.src);
          }
        });
        observer.observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
        """
    )


def _wait(driver, condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    driver.save_screenshot(str(Path(tempfile.gettempdir()) / "anime-ddpm-demo-failure.png"))
    raise AssertionError(f"Timed out waiting for {what}; the page says: {_body(driver)[-1500:]}")


def _body(driver) -> str:
    return driver.find_element(_by().TAG_NAME, "body").text


def _type(driver, css: str, value):
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(_by().CSS_SELECTOR, css)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if value != "":
        field.send_keys(str(value))
    driver.execute_script("arguments[0].blur()", field)


def _set(driver, num_images=None, seed=None, scheduler=None, steps=None):
    from selenium.webdriver.common.keys import Keys

    if num_images is not None:
        _type(driver, "#num_images input[type=number]", num_images)
    if seed is not None:
        _type(driver, "#seed input", seed)
    if scheduler is not None:
        field = driver.find_element(_by().CSS_SELECTOR, "#scheduler input")
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(scheduler)
        field.send_keys(Keys.ENTER)
        _wait(driver, lambda: field.get_attribute("value") == scheduler, f"the scheduler to become {scheduler}")
        time.sleep(0.3)  # the scheduler's change event resets the steps to its default
    if steps is not None:
        _type(driver, "#steps input[type=number]", steps)


def _status(driver) -> str:
    return driver.find_element(_by().ID, "status").text


def _fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def _result(driver) -> tuple[np.ndarray, np.ndarray, str]:
    """The grid the page shows, the PNG its download link serves, and the download's file name."""
    shown = driver.find_element(_by().CSS_SELECTOR, "#result img").get_attribute("src")
    link = driver.find_element(_by().CSS_SELECTOR, "#download a[download]")
    return _fetch_png(shown), _fetch_png(link.get_attribute("href")), link.get_attribute("download")


def _generate_and_wait(driver):
    driver.find_element(_by().ID, "generate").click()
    _wait(driver, lambda: _status(driver).startswith("Done"), "sampling to finish")
    _wait(driver, lambda: driver.find_elements(_by().CSS_SELECTOR, "#download a[download]"), "the download link")
    _wait(driver, lambda: driver.execute_script(ALL_IMAGES_LOADED), "x_t, x_0 and the result to display")


ALL_IMAGES_LOADED = """
const images = [...document.querySelectorAll('#x_t img, #x_0 img, #result img')];
return images.length === 3 && images.every(image => image.complete && image.naturalWidth > 0);
"""


# ----------------------------------------------------------------------------------------------------- browser tests
@pytest.mark.slow
def test_page_streams_the_reverse_process_and_gives_the_sample_images(server, browser, reference, model_dir, tmp_path):
    _open(browser, server)
    _set(browser, scheduler="ddim")
    steps_field = browser.find_element(_by().CSS_SELECTOR, "#steps input[type=number]")
    _wait(browser, lambda: steps_field.get_attribute("value") == "50", "ddim's default steps")
    _set(browser, num_images=3, seed=11, steps=24)
    _generate_and_wait(browser)

    seen = browser.execute_script("return window.seen")
    assert len(set(seen["x_t"])) >= 3, seen
    assert len(set(seen["x_0"])) >= 3, seen
    assert all("/gradio_api/file=" in src for src in seen["x_t"])

    shown, downloaded, name = _result(browser)
    expected = reference(3, 11, "ddim", 24)
    assert shown.shape == expected.shape == (38, 38, 3)  # 2 x 2 tiles of 16 px with 2 px padding, as the CLI lays out
    np.testing.assert_array_equal(shown, expected)
    np.testing.assert_array_equal(downloaded, expected)
    assert name.endswith(".png") and "seed11" in name
    # ... and the very grid the command line writes for the same settings.
    from anime_ddpm import cli

    argv = ["sample", str(model_dir), "--num", "3", "--seed", "11", "--scheduler", "ddim", "--steps", "24"]
    assert cli.main([*argv, "--device", "cpu", "--output", str(tmp_path / "cli.png")]) == 0
    np.testing.assert_array_equal(shown, np.asarray(Image.open(tmp_path / "cli.png").convert("RGB")))
    assert "Traceback" not in _body(browser)
    browser.save_screenshot(str(tmp_path / "demo.png"))


@pytest.mark.slow
def test_bad_values_get_a_message_and_the_app_keeps_serving(server, browser, reference):
    _open(browser, server)
    _set(browser, seed=-5)  # out of the field's bounds: the server's check says what to enter
    browser.find_element(_by().ID, "generate").click()
    _wait(browser, lambda: "The seed must be a whole number from 0" in _status(browser), "the bound's message")

    _set(browser, seed="")  # an empty field reaches our own server-side check
    browser.find_element(_by().ID, "generate").click()
    _wait(browser, lambda: "Enter a value for the seed" in _status(browser), "the demo's message")
    assert "Traceback" not in _body(browser)

    _set(browser, num_images=2, seed=4, scheduler="euler", steps=8)
    _generate_and_wait(browser)
    shown, _, _ = _result(browser)
    np.testing.assert_array_equal(shown, reference(2, 4, "euler", 8))


@pytest.mark.slow
def test_two_tabs_at_once_each_get_their_own_images(server, browser, reference):
    first = browser.current_window_handle
    _open(browser, server)
    _set(browser, num_images=2, seed=21, steps=12)
    browser.switch_to.new_window("tab")
    second = browser.current_window_handle
    _open(browser, server)
    _set(browser, num_images=3, seed=22, scheduler="unipc", steps=10)

    browser.switch_to.window(first)
    browser.find_element(_by().ID, "generate").click()
    browser.switch_to.window(second)
    browser.find_element(_by().ID, "generate").click()  # queued behind the first (concurrency limit 1)
    results = {}
    for handle, settings in ((first, (2, 21, "dpm++", 12)), (second, (3, 22, "unipc", 10))):
        browser.switch_to.window(handle)
        _wait(browser, lambda: _status(browser).startswith("Done"), "both tabs to finish")
        _wait(browser, lambda: browser.find_elements(_by().CSS_SELECTOR, "#download a[download]"), "the download")
        results[settings] = _result(browser)[0]
    browser.close()
    browser.switch_to.window(first)
    for settings, shown in results.items():
        np.testing.assert_array_equal(shown, reference(*settings))


@pytest.mark.slow
def test_readme_screenshot(browser, model_dir, tmp_path, monkeypatch):
    """Opt-in: ANIME_DDPM_DEMO_SCREENSHOT=docs/demo.png [ANIME_DDPM_DEMO_MODEL=...] refreshes the README image."""
    target = os.environ.get("ANIME_DDPM_DEMO_SCREENSHOT")
    if not target:
        pytest.skip("set ANIME_DDPM_DEMO_SCREENSHOT=docs/demo.png to refresh the README's screenshot")
    target = os.path.abspath(target)
    model = os.environ.get("ANIME_DDPM_DEMO_MODEL")
    if not model:  # a short relative name reads better in the page's command line than a temporary path
        shutil.copytree(model_dir, tmp_path / "ddpm-tiny-untrained")
        monkeypatch.chdir(tmp_path)
        model = "ddpm-tiny-untrained"
    app, url = _serve(model)
    try:
        browser.set_window_size(1100, 900)
        _open(browser, url)
        _set(browser, num_images=16, seed=0)
        _generate_and_wait(browser)
        time.sleep(0.5)
        png = browser.get_screenshot_as_png()
        Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(target, optimize=True)
    finally:
        app.close()
        browser.set_window_size(1280, 900)


# ----------------------------------------------------------------------------------------------------- no browser
def test_server_refuses_values_outside_the_page_bounds(model_dir):
    sampler = DemoSampler(load_pipeline(str(model_dir), device="cpu"))
    assert sampler.parse(4, 0, "ddim", 50) == demo_module.Request(4, 0, "ddim", 50)
    assert sampler.parse(4.0, "7", "ddpm", 1000).seed == 7
    for values, message in (
        ((0, 0, "ddim", 10), "number of images must be a whole number from 1 to 16"),
        ((17, 0, "ddim", 10), "from 1 to 16"),
        ((2, -1, "ddim", 10), "seed must be"),
        ((2, 1.5, "ddim", 10), "seed must be"),
        ((2, None, "ddim", 10), "Enter a value for the seed"),
        ((2, "x", "ddim", 10), "seed must be"),
        ((2, 0, "heun!", 10), "Unknown scheduler"),
        ((2, 0, "ddim", 0), "number of steps"),
        ((2, 0, "ddim", 1001), "number of steps"),
        ((2, 0, "dpm++", 1000), r"dpm\+\+ takes at most 999 steps"),
        ((2, 0, "ddim", float("nan")), "number of steps"),
        ((2, 0, "ddim", 10, "celeba"), "Unknown domain"),
    ):
        with pytest.raises(DemoError, match=message):
            sampler.parse(*values)


def test_stream_previews_then_the_sample_images(model_dir):
    pipe = load_pipeline(str(model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    sampler = DemoSampler(pipe, max_previews=5)
    events = list(sampler.stream(sampler.parse(2, 3, "euler", 10)))
    previews, final = events[:-1], events[-1]
    assert 1 <= len(previews) <= 6 and all(e.x_t.size == e.x_0.size == (38, 20) for e in previews)
    assert final.images is not None and final.text.startswith("Done")
    expected = generate(with_scheduler(pipe, "euler"), 2, seed=3, batch_size=16, num_inference_steps=10)
    assert torch.equal(final.images, expected)


def test_export_space_writes_a_space_that_runs_the_same_app(tmp_path):
    out = export_space("someone/ddpm-anime-64", tmp_path / "space", package="anime-ddpm==0.1.0")
    app = (out / "app.py").read_text()
    tree = ast.parse(app)
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert any(node.module == "anime_ddpm.demo" for node in imports)
    assert 'build_demo("someone/ddpm-anime-64")' in app
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert "anime-ddpm==0.1.0" in requirements and "torch" in requirements
    assert any(line.startswith("gradio==") for line in requirements)
    assert any("download.pytorch.org/whl/cpu" in line for line in requirements)
    readme = (out / "README.md").read_text()
    header = readme.split("---")[1]
    short = next(line for line in header.splitlines() if line.startswith("short_description:"))
    assert len(short.split(":", 1)[1].strip()) <= 60  # the Hub's limit
    for field in ("title: ddpm-anime-64", "sdk: gradio", "sdk_version: ", "app_file: app.py", "license: apache-2.0"):
        assert field in header
    with pytest.raises(DemoError, match="repo id"):
        export_space(str(tmp_path), tmp_path / "other")


def test_an_exported_space_carries_the_package_when_no_index_has_it(tmp_path):
    import subprocess
    import sys

    out = export_space("someone/ddpm-anime-64", tmp_path / "space")
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert not any(line.startswith("anime-ddpm") for line in requirements) and "diffusers" in requirements
    assert (out / "anime_ddpm" / "demo.py").is_file() and (out / "anime_ddpm" / "model_card.md").is_file()
    assert not list(out.rglob("__pycache__"))
    code = "import sys; sys.path.insert(0, '.'); import anime_ddpm.demo as demo; print(demo.__file__)"
    found = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(out / "anime_ddpm" / "demo.py")  # app.py's import finds the copy


def test_command_line(monkeypatch, tmp_path, capsys, model_dir):
    import argparse

    parser = argparse.ArgumentParser(prog="anime-ddpm")
    demo_module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "user/model"])
    assert (args.host, args.port, args.export_space, args.handler) == ("127.0.0.1", 7860, None, demo_module.run)

    args = parser.parse_args(["demo", "user/model", "--export-space", str(tmp_path / "space")])
    assert args.handler(args) == 0 and (tmp_path / "space" / "app.py").is_file()

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if gradio were not installed
    args = parser.parse_args(["demo", str(model_dir), "--port", "7999"])
    assert args.handler(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[demo]"' in err


def test_domain_models_get_domain_and_guidance_controls():
    torch.manual_seed(0)
    unet = build_unet("tiny", 16, num_class_embeds=3)
    unet.register_to_config(domains=["anime", "celeba"])
    pipe = AnimeDDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    sampler = DemoSampler(pipe)
    request = sampler.parse(2, 5, "ddim", 6, "celeba", 2.5)
    assert (request.domain, request.guidance_scale) == ("celeba", 2.5)
    assert sampler.parse(2, 5, "ddim", 6, demo_module.UNCONDITIONAL, 2.5).domain is None
    with pytest.raises(DemoError, match="guidance scale must be a number from 0 to 10"):
        sampler.parse(2, 5, "ddim", 6, "anime", 11)
    final = list(sampler.stream(request))[-1]
    ddim = with_scheduler(pipe, "ddim")
    expected = generate(ddim, 2, seed=5, batch_size=16, num_inference_steps=6, domain="celeba", guidance_scale=2.5)
    assert torch.equal(final.images, expected)

    try:
        import gradio  # noqa: F401
    except ImportError:
        _require_browser_stack('gradio is missing: install it with pip install -e ".[demo]" (or run make test).')
    app = demo_module.build_demo(pipe, title="two domains")
    labels = {c.get("props", {}).get("label") for c in app.config["components"]}
    assert {"Domain", "Guidance scale (1 = none)", "Images", "Seed", "Scheduler", "Steps"} <= labels


def test_a_closed_page_stops_its_sampling(model_dir):
    import threading

    pipe = load_pipeline(str(model_dir), device="cpu")
    sampler = DemoSampler(pipe, max_previews=200)
    stream = sampler.stream(sampler.parse(1, 0, "ddpm", 500))
    assert next(stream).images is None
    stream.close()  # what gradio does when the page goes away
    deadline = time.monotonic() + 20
    while any(t.name == "anime-ddpm-demo-sampler" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "anime-ddpm-demo-sampler" for t in threading.enumerate())


# ----------------------------------------------------------------------------------------------------- HTTP API
def _require_gradio():
    try:
        import gradio  # noqa: F401
    except ImportError:
        _require_browser_stack('gradio is missing: install it with pip install -e ".[demo]" (or run make test).')


@pytest.fixture(scope="module")
def api():
    """`POST /gradio_api/call/generate` on a served demo of a tiny model trained with T = 20: (event, data) of the
    call's last server-sent event."""
    import json

    _require_gradio()
    torch.manual_seed(0)
    pipe = AnimeDDPMPipeline(unet=build_unet("tiny", 8), scheduler=DDPMScheduler(num_train_timesteps=20))
    app = demo_module.build_demo(pipe)
    port = _free_port()
    demo_module.launch(app, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/gradio_api/call/generate"

    def call(*values):
        body = json.dumps({"data": list(values)}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            event_id = json.loads(response.read())["event_id"]
        with urllib.request.urlopen(f"{url}/{event_id}", timeout=TIMEOUT) as response:
            lines = response.read().decode().splitlines()
        event = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")][-1]
        data = [line.split(":", 1)[1].strip() for line in lines if line.startswith("data:")][-1]
        return event, json.loads(data)

    yield call
    app.close()


def test_the_api_samples_the_whole_chain_the_demo_allows(api):
    """The steps slider is built for dpm++ (T - 1 steps at most), but DDPM may take all T through the API too."""
    event, data = api(1, 0, "ddpm", 20)
    assert event == "complete" and data[2].startswith("Done"), data
    event, data = api(1, 0, "dpm++", 20)
    assert (event, data["error"]) == ("error", "dpm++ takes at most 19 steps with this model, got 20.")


@pytest.mark.parametrize(
    "values,message",
    [
        (("x", 0, "ddim", 2), "The number of images must be a whole number from 1 to 16, got 'x'."),
        ((2, "x", "ddim", 2), "The seed must be a whole number"),
        ((2, 0, "ddim", None), "Enter a value for the number of steps"),
        ((2, 0, "ddim", [1]), "The number of steps must be a whole number from 1 to 20, got [1]."),
        ((2, 0, "nope", 2), "Unknown scheduler 'nope'"),
        ((0, 0, "ddim", 2), "number of images must be a whole number from 1 to 16, got 0."),
        ((2, -1, "ddim", 2), "The seed must be a whole number from 0"),
    ],
)
def test_malformed_api_calls_get_one_sentence(api, values, message):
    event, data = api(*values)
    assert event == "error" and data["error"] and message in data["error"], data


# ----------------------------------------------------------------------------------------------------- lifetime
def test_a_port_that_is_taken_or_out_of_range_fails_before_the_model_loads(monkeypatch, capsys):
    import argparse

    _require_gradio()
    parser = argparse.ArgumentParser(prog="anime-ddpm")
    demo_module.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "user/model", "--port", "70000"])
    assert "expected a port number from 1 to 65535, got '70000'" in capsys.readouterr().err

    monkeypatch.setattr(demo_module, "build_demo", lambda *a, **kw: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert demo_module.run(parser.parse_args(["demo", "user/model", "--port", str(port)])) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"Cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err


def _demo_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("anime-ddpm-demo-*"))


def _environment(tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}


def test_the_demo_files_go_when_the_process_ends(model_dir, tmp_path):
    _require_gradio()
    tmp = tmp_path / "tmp"
    code = "import sys; from anime_ddpm.demo import build_demo; build_demo(sys.argv[1]); print('built')"
    result = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)],
        env=_environment(tmp),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0 and "built" in result.stdout, result.stderr
    assert _demo_folders(tmp) == []


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl+C"])
def test_the_demo_files_go_when_the_server_is_stopped(model_dir, tmp_path, stop):
    _require_gradio()
    tmp, port = tmp_path / "tmp", _free_port()
    command = [sys.executable, "-m", "anime_ddpm.cli", "demo", str(model_dir), "--port", str(port)]
    # As from a terminal: SIGINT at its default (pytest-xdist's workers ignore it, and a child inherits that).
    server = subprocess.Popen(command, env=_environment(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the demo did not start"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        assert len(_demo_folders(tmp)) == 1
        server.send_signal(stop)
        output = server.communicate(timeout=60)[0].decode()
    finally:
        server.kill()
    assert "Traceback" not in output, output
    assert _demo_folders(tmp) == []
