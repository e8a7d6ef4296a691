"""launch/evaluate.py's job on a real cluster: a finished run's checkpoint scored on the
same workers and pipeline gives the run's own val_top1; the export rebuilds the same model
outside Ray; and a torchvision model other than raylars' four trains end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ingest.digits import load_digits_arrays
from job.config import compose
from job.evaluate import evaluation_config, run_evaluation
from job.trainer import run_training
from trainers.models import build_model

REPO = Path(__file__).resolve().parents[2]


def test_evaluate_reproduces_the_runs_val_metrics_and_export_rebuilds_it(digits_runs,
                                                                          tmp_path):
    summary = digits_runs["first"]
    checkpoint = summary["checkpoint"]
    saved = torch.load(Path(checkpoint) / "state.pt", weights_only=True)
    # The resolved training config, as plain data (it loaded with weights_only=True).
    assert saved["config"]["model"] == summary["config"]["model"]
    assert saved["config"]["trainer"]["epochs"] == 3
    export = tmp_path / "export" / "model.pt"
    result = run_evaluation(evaluation_config(checkpoint, [f"run.output_dir={tmp_path / 'e'}"]),
                            checkpoint=checkpoint, export=str(export))
    last = summary["history"][-1]
    # Same weights, same BN statistics, the same val slices per worker: exactly the same.
    assert result["val_top1"] == summary["val_top1"] and result["val_top5"] == summary["val_top5"]
    assert result["val_samples"] == summary["val_samples"] == 360
    assert result["val_loss"] == pytest.approx(last["val_loss"], rel=1e-12)
    assert math.isfinite(result["val_loss"]) and result["val_loss"] > 0
    assert json.loads((tmp_path / "e" / "evaluation.json").read_text())["val_top1"] == \
        summary["val_top1"]

    # The export alone (a plain state_dict and its JSON) rebuilds the checkpoint's model.
    meta = json.loads(Path(f"{export}.json").read_text())
    exported = build_model(**meta["model"])
    exported.load_state_dict(torch.load(export, weights_only=True))
    reference = build_model(**meta["model"])
    reference.load_state_dict(saved["model"])
    images, labels, _ = load_digits_arrays(image_size=32, val_fraction=0.2, seed=0)["val"]
    mean = torch.tensor(meta["input"]["mean"], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(meta["input"]["std"], dtype=torch.float64).view(1, -1, 1, 1)
    x = ((torch.from_numpy(images).double() / 255 - mean) / std).float()
    with torch.no_grad():
        logits = exported.eval()(x)
        assert torch.equal(logits, reference.eval()(x))
    # ... and, fed as its JSON says, scores the run's val_top1 outside Ray.
    top1 = (logits.argmax(dim=1).numpy() == labels).mean()
    assert abs(top1 - summary["val_top1"]) <= 1 / 360, (top1, summary["val_top1"])


def test_a_torchvision_model_trains_and_evaluates_from_the_cli(ray_cluster, tmp_path):
    summary = run_training(compose([
        "model.name=resnet18", "trainer.epochs=1", "optim.warmup_epochs=0",
        "trainer.max_steps_per_epoch=2", f"run.output_dir={tmp_path / 'run'}"]))
    assert summary["global_steps"] == 2 and summary["epochs_completed"] == 1
    assert math.isfinite(summary["train_loss"]) and summary["val_samples"] == 360
    checkpoint = Path(summary["checkpoint"])
    saved = torch.load(checkpoint / "state.pt", weights_only=True)
    assert saved["config"]["model"]["name"] == "resnet18"
    assert "layer4.1.bn2.weight" in saved["model"]  # torchvision's ResNet-18 layout
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "launch" / "evaluate.py"), str(checkpoint),
         f"ray.address={ray_cluster}", f"run.output_dir={tmp_path / 'eval'}",
         "--export", str(tmp_path / "r18.pt")],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == str(tmp_path / "eval" / "evaluation.json")
    assert any(line.startswith("[raylars] evaluation: val_top1=") for line in lines)
    result = json.loads(Path(lines[-1]).read_text())
    assert result["val_top1"] == summary["val_top1"]
    weights = torch.load(tmp_path / "r18.pt", weights_only=True)
    model = build_model(**json.loads((tmp_path / "r18.pt.json").read_text())["model"])
    model.load_state_dict(weights)
    assert result["val_samples"] == 360 and result["export"] == str(tmp_path / "r18.pt")
