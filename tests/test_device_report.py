"""The prepared accelerator run (`python -m bench.device_report --device cuda`) is one shot on a lent GPU: its CPU
smoke form runs every section here, so that shot cannot fail on a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_device_report_smoke_runs_every_section(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.device_report", "--device", "cpu", "--smoke", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["skipped"] == []
    checks = {c["check"]: c["ok"] for c in report["checks"]}
    assert checks["bf16 autocast: noising and loss in fp32"] is True
    assert checks["--compile gradients vs float64"] is True
    assert "fp16 GradScaler" in checks  # ran (as fp32: no scaler on a CPU)
    assert set(report["matmul"]) >= {"fp32", "bf16", "fp16"}
    rows = {(r["precision"], r["compile"]) for r in report["training"]}
    assert rows == {("fp32", False), ("bf16", False), ("fp16", False), ("fp32", True)}
    assert all(r["images_per_second"] > 0 and 0 < r["utilisation"] for r in report["training"])
    assert {"ddpm_2_seconds", "dpm++_2_seconds"} <= set(report["sampling"][0])
    shapes = {(r["shape"], r["workers"]) for r in report["data"]}
    assert len(shapes) == 4 and all(r["images_per_second"] > 0 and r["x_consumption"] > 0 for r in report["data"])
    assert "| train | tiny 16 px b4 fp32 compile |" in proc.stdout
