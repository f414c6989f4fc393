"""The demo's loop: a second camera's labelled frames become a dataset version, a retrained
model is evaluated beside the version serving now, approved by a second account and
deployed. Each step is central-sync's own CLI where it has one; a step already done is skipped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script, deploy/ is first on the path, not the repo
    sys.path.insert(0, str(REPO))

MODEL = "surface-defects"
SECOND_CAMERA = "line2-gw1"  # the gateway of the out-of-focus camera being commissioned
DATASET = "surface-labels"
NEW_VERSION = "1.1.0"
FRAMES_PER_CLASS = 40  # 160 labelled frames: enough for the head, quick on two cores

Central = Callable[..., subprocess.CompletedProcess]


def run_loop(console: Console, central: Central, central_cfg: Path, workdir: Path,
             device: str, labeller: str, reviewer: str) -> None:
    """`central(env_user, *args)` runs central-sync as that account (the demo's helper)."""
    started = time.monotonic()
    console.rule("[bold]the loop: labels → dataset → retrain → evaluation → approval → deployment")
    _label_second_camera(console, central_cfg, labeller)
    _freeze_dataset(console, central, labeller)
    ref = f"{MODEL}@{NEW_VERSION}"
    if central(labeller, "model", "show", ref).returncode == 0:
        console.print(f"[green]✓[/] already published      {ref} (trained on {DATASET}@1)")
    else:
        model_file, metadata = _train(console, central, workdir, labeller)
        published = central(labeller, "model", "publish", str(model_file), "--metadata",
                            str(metadata), "--dataset", f"{DATASET}@1")
        _require(published, "model publish")
        console.print(f"[green]✓[/] published, evaluated   {ref} on {DATASET}@1's test split, "
                      "beside the version serving now:")
        for line in _report_lines(published.stdout):
            console.print(f"    {line}", markup=False, highlight=False)
    approved = central(reviewer, "model", "approve", ref)
    if approved.returncode != 0 and "already approved" not in approved.stderr:
        _require(approved, "model approve")
    console.print(f"[green]✓[/] approved                {ref} by {reviewer} (not its publisher)")
    # deploy --wait returns once the gateway activates it, as the first deployments do; a
    # rollout would wait out the gateway's probation (a minute) before confirming it.
    console.print(f"[bold]→[/] deploying {ref} to {device} over MQTT ...")
    deployed = central(labeller, "deploy", ref, "--device", device, "--wait", "120")
    for line in (deployed.stdout + deployed.stderr).strip().splitlines():
        console.print(f"    {line}", markup=False, highlight=False)
    _require(deployed, "deploy")
    console.print(f"[green]the loop took {time.monotonic() - started:.1f} s[/]")


def _label_second_camera(console: Console, central_cfg: Path, labeller: str) -> None:
    """The second camera's frames as its gateway's sample records, labelled as a quality
    engineer labels them on /review/samples; central's own code stores and labels them."""
    from central_sync.config import load_central_config
    from central_sync.db import CentralDB
    from sample_data.labelled_frames import labelled_patches, store_labelled_samples

    patches = labelled_patches(FRAMES_PER_CLASS, seed=31)
    db = CentralDB(load_central_config(central_cfg).database_url)
    try:
        labelled = store_labelled_samples(db, patches, SECOND_CAMERA, labeller,
                                          t0=time.time() - len(patches))
    finally:
        db.close()
    if labelled:
        console.print(f"[green]✓[/] second camera          {SECOND_CAMERA} (out of focus): "
                      f"{len(patches)} sampled frames labelled by {labeller}")
    else:
        console.print(f"[green]✓[/] second camera          {SECOND_CAMERA}: its {len(patches)} "
                      "frames were labelled in an earlier run")


def _freeze_dataset(console: Console, central: Central, labeller: str) -> None:
    if central(labeller, "dataset", "show", f"{DATASET}@1").returncode == 0:
        console.print(f"[green]✓[/] dataset                {DATASET}@1 (frozen in an earlier run)")
        return
    created = central(labeller, "dataset", "create", DATASET, "--from-review", "--origin",
                      "samples", "--device", SECOND_CAMERA)
    _require(created, "dataset create")
    console.print(f"[green]✓[/] dataset frozen         {created.stdout.strip().splitlines()[0]}",
                  highlight=False)


def _train(console: Console, central: Central, workdir: Path, by: str) -> tuple[Path, Path]:
    out = workdir / "trained"
    model_file = out / f"{MODEL}-{NEW_VERSION}.onnx"
    metadata = model_file.with_suffix(".json")
    if model_file.exists() and metadata.exists():
        return model_file, metadata
    trained = central(by, "train", MODEL, "--dataset", f"{DATASET}@1", "--base",
                      f"{MODEL}@1.0.0", "--version", NEW_VERSION, "--out", str(out), "--by", by)
    _require(trained, "train")
    console.print(f"[green]✓[/] retrained              {MODEL} {NEW_VERSION} on {DATASET}@1 "
                  f"(its head; the 1.0.0 trunk kept) → {model_file.relative_to(workdir)}")
    return model_file, metadata


def _report_lines(published: str) -> list[str]:
    """The side-by-side figures and per-class table of the publish's output; the confusion
    matrices are left to the model page."""
    lines = published.rstrip().splitlines()
    cut = next((i for i, line in enumerate(lines) if line.startswith("confusion")), len(lines))
    return [line.rstrip() for line in lines[:cut] + lines[-1:] if line.strip()]


def _require(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {(result.stderr or result.stdout).strip()}")
