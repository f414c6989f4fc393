"""Benchmark: the agent's vision pipeline against a bare session.run loop and a naive loop.

Side by side in one run, on the same model and thread settings, from 1080p JPEG frames:
  (a) bare: `session.run` in a loop on one preprocessed tensor (the model's own speed);
  (a') bare beside the decode: the same loop while another thread decodes one JPEG per run,
      as the camera does for the pipeline; on a small machine the two share caches and memory
      bandwidth, so this is the most a pipeline that decodes JPEGs can reach;
  (b) naive: read a JPEG, resize, convert, normalise, run, one after the other, as a user
      would write it;
  (c) the agent: a camera source on the folder of JPEGs and the vision pipeline (decode at a
      reduced size in the camera's thread, the next frame prepared during inference).
  (d) decode only: the camera source alone, as fast as it can read (the floor for a small model).
For the committed surface-defect model and a MobileNet-class ImageNet classifier (built here,
random weights, same compute). Each is measured in `--rounds` interleaved rounds; the median
round is shown, and each ratio is the median of the rounds' own ratios (paths measured side by
side in one round share the machine's state). Prints frames/s, p50/p99 latency, RSS and the
ratios (c)/(a), (c)/(a'), (c)/(b) and (c)/floor, the floor being the slower of (a') and (d):
a model faster than the JPEG decode (the committed one runs ~20x faster than a 1080p frame
decodes) leaves the pipeline bound by the decode, so there (c)/floor is what the pipeline adds.
One ONNX Runtime thread by default: on a 2-core gateway the other core decodes.
Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_vision.py
    .venv/bin/python tests/benchmarks/bench_vision.py --threads 2 --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.buffer import Buffer  # noqa: E402
from edge_agent.config import CameraSourceConfig, VisionPipelineConfig  # noqa: E402
from edge_agent.inference.runtime import RuntimeOptions  # noqa: E402
from edge_agent.inference.vision import Preprocessor, vision_spec  # noqa: E402
from edge_agent.kernel.contract import ModelManifest  # noqa: E402
from edge_agent.kernel.gctune import tune_for_service  # noqa: E402
from edge_agent.model_store import ModelStore  # noqa: E402
from edge_agent.pipelines.vision import VisionPipeline  # noqa: E402
from edge_agent.sources.camera import CameraSource, FolderReader  # noqa: E402
from sample_data.make_vision_data import DEFECTS, finish, texture  # noqa: E402
from tests.helpers import manifest_of  # noqa: E402

console = Console(width=120)
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def mobilenet_v1(path: Path, seed: int = 0) -> Path:
    """MobileNet v1 (width 1.0, 224x224, 1000 classes): ~570 MFLOPs, random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def conv(x: str, cin: int, cout: int, kernel: int, stride: int, group: int = 1) -> str:
        counter[0] += 1
        name = f"c{counter[0]}"
        fan_in = cin // group * kernel * kernel
        weight = rng.normal(0, np.sqrt(2 / fan_in), (cout, cin // group, kernel, kernel))
        inits.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                      kernel_shape=[kernel, kernel], strides=[stride, stride],
                                      pads=[kernel // 2] * 4, group=group))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        return f"{name}_r"

    x = conv("data", 3, 32, 3, 2)
    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
            (256, 512, 2), *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1)]
    for cin, cout, stride in plan:
        x = conv(x, cin, cin, 3, stride, group=cin)
        x = conv(x, cin, cout, 1, 1)
    fc = rng.normal(0, np.sqrt(1 / 1024), (1024, 1000)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc_w"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc_w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "mobilenet_v1",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_frames(folder: Path, count: int) -> list[Path]:
    """1080p JPEG frames of a metal surface with defects (quality 90, as cameras send)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    small = texture(rng, 270, 480)
    for _ in range(12):
        kind = str(rng.choice(list(DEFECTS)))
        DEFECTS[kind](rng, small, rng.uniform(20, 460), rng.uniform(20, 250))
    base = cv2.resize(finish(rng, small), (1920 + 8 * count, 1080),
                      interpolation=cv2.INTER_CUBIC)
    paths = []
    for i in range(count):
        path = folder / f"frame{i:04d}.jpg"
        cv2.imwrite(str(path), base[:, i * 8:i * 8 + 1920], [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def summary(times_s: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times_s)
    return {"fps": len(ms) / (sum(ms) / 1000), "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))]}


def bench_bare(path: Path, manifest: ModelManifest, options: RuntimeOptions,
               frames: list[Path], seconds: float) -> dict[str, float]:
    session = ort.InferenceSession(str(path), options.session_options(),
                                   providers=options.available_providers())
    preprocess = Preprocessor(vision_spec(manifest).preprocessing, manifest.inputs[0].dtype)
    tensor, _ = preprocess(cv2.imread(str(frames[0])))
    feed = {manifest.inputs[0].name: tensor}
    for _ in range(5):
        session.run(None, feed)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return summary(times)


def bench_bare_beside_decode(path: Path, manifest: ModelManifest, options: RuntimeOptions,
                             frames: list[Path], seconds: float,
                             decode_width: int) -> dict[str, float]:
    """(a) while a second thread decodes one JPEG per run, as the camera thread does."""
    reader = FolderReader(frames[0].parent, decode_width)
    wanted, stop = threading.Semaphore(0), threading.Event()

    def decode() -> None:
        while not stop.is_set():
            if wanted.acquire(timeout=0.1) and reader.read() is None:
                reader.rewind()

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    session = ort.InferenceSession(str(path), options.session_options(),
                                   providers=options.available_providers())
    preprocess = Preprocessor(vision_spec(manifest).preprocessing, manifest.inputs[0].dtype)
    feed = {manifest.inputs[0].name: preprocess(cv2.imread(str(frames[0])))[0]}
    times, deadline = [], time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            wanted.release()
            session.run(None, feed)
            times.append(time.perf_counter() - started)
    finally:
        stop.set()
        thread.join()
    return summary(times)


def bench_decode(folder: Path, seconds: float, decode_width: int) -> dict[str, float]:
    """(d) the camera's reader alone: the most frames/s any pipeline can get from these JPEGs."""
    reader = FolderReader(folder, decode_width)
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        if reader.read() is None:
            reader.rewind()
            continue
        times.append(time.perf_counter() - started)
    return summary(times)


def bench_naive(path: Path, manifest: ModelManifest, options: RuntimeOptions,
                frames: list[Path], seconds: float) -> dict[str, float]:
    """What a user writes first: decode the whole JPEG, then prepare, then run."""
    session = ort.InferenceSession(str(path), options.session_options(),
                                   providers=options.available_providers())
    pre = vision_spec(manifest).preprocessing
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    name = manifest.inputs[0].name
    times, deadline, i = [], time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        image = cv2.imread(str(frames[i % len(frames)]))
        image = cv2.resize(image, tuple(pre.size))
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) * pre.scale
        tensor = ((image - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        session.run(None, {name: tensor})
        times.append(time.perf_counter() - started)
        i += 1
    return summary(times)


def bench_agent(workdir: Path, path: Path, manifest: ModelManifest, options: RuntimeOptions,
                folder: Path, seconds: float, decode_width: int) -> dict[str, float]:
    store = ModelStore(workdir / "models")
    store.install(manifest, path)
    store.activate(manifest.name, manifest.version)
    camera = CameraSource(CameraSourceConfig(type="camera", name="bench", url=str(folder),
                                             native_rate=False, decode_width=decode_width))
    buffer = Buffer(workdir / "buffer.db", 10**9)
    config = VisionPipelineConfig.model_validate({
        "type": "vision", "name": "bench", "source": "bench", "model": manifest.name,
        "defects": {"classes": ["scratch", "pit", "stain"], "cooldown_s": 5},
        "sampling": {"uncertain_band": None, "normal_share": 0},
        "runtime": options.model_dump()})
    pipeline = VisionPipeline(config, camera, store, buffer)
    latencies: list[float] = []
    handle = pipeline._handle

    async def timed_handle(prepared, results):
        latencies.append(time.time() - prepared.frame.grabbed_at)
        return await handle(prepared, results)

    pipeline._handle = timed_handle  # type: ignore[method-assign]

    async def run() -> tuple[int, float]:
        tasks = [asyncio.create_task(camera.run()), asyncio.create_task(pipeline.run())]
        while pipeline.status.frames < 5:  # model loaded, pipeline warm
            await asyncio.sleep(0.01)
        start_frames, started = pipeline.status.frames, time.perf_counter()
        await asyncio.sleep(seconds)
        frames, elapsed = pipeline.status.frames - start_frames, time.perf_counter() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return frames, elapsed

    frames, elapsed = asyncio.run(run())
    buffer.close_sync()
    ms = sorted(t * 1000 for t in latencies[5:])
    return {"fps": frames / elapsed, "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))]}


PATHS = [("a", "(a) bare session.run"), ("a'", "(a') bare beside the decode"),
         ("b", "(b) naive loop"), ("c", "(c) agent pipeline"), ("d", "(d) decode only")]


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    return sorted(rounds, key=lambda r: r["fps"])[len(rounds) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median shown)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--frames", type=int, default=60, help="1080p JPEG frames to cycle")
    args = parser.parse_args()
    tune_for_service()
    options = RuntimeOptions(intra_op_threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vision-") as tmp:
        work = Path(tmp)
        frames = make_frames(work / "frames", args.frames)
        surface_meta = json.loads((REPO / "sample_data" / "surface_defects.json").read_text())
        mobilenet_meta = {"preprocessing": {"size": [224, 224], **IMAGENET},
                          "decoder": {"type": "classification", "top_k": 5}}
        models = [
            ("surface-defects (committed, 64x64)", REPO / "sample_data" / "surface_defects.onnx",
             surface_meta, 256),
            ("MobileNet v1 class (224x224, 1000 classes)", mobilenet_v1(work / "mobilenet.onnx"),
             mobilenet_meta, 480),
        ]
        console.print(f"[bold]vision benchmark[/]: {len(frames)} 1920x1080 JPEG frames, "
                      f"{args.threads} ONNX Runtime thread(s), {args.rounds} rounds of "
                      f"{args.seconds:g} s per measurement")
        for label, path, meta, decode_width in models:
            name = "surface-defects" if "surface" in label else "mobilenet"
            manifest = manifest_of(path, meta, name)
            runs: dict[str, list[dict[str, float]]] = {key: [] for key, _ in PATHS}
            for round_ in range(args.rounds):
                runs["a"].append(bench_bare(path, manifest, options, frames, args.seconds))
                runs["a'"].append(bench_bare_beside_decode(path, manifest, options, frames,
                                                           args.seconds, decode_width))
                runs["b"].append(bench_naive(path, manifest, options, frames, args.seconds))
                runs["c"].append(bench_agent(work / f"{name}-{round_}", path, manifest, options,
                                             work / "frames", args.seconds, decode_width))
                runs["d"].append(bench_decode(work / "frames", args.seconds, decode_width))
                console.print(f"  {label}, round {round_ + 1}: " + ", ".join(
                    f"{key} {runs[key][-1]['fps']:.0f}" for key, _ in PATHS) + " frames/s")
            runs["floor"] = [min(beside, decode, key=lambda r: r["fps"])
                             for beside, decode in zip(runs["a'"], runs["d"], strict=True)]
            ratios = {k: statistics.median(c["fps"] / other["fps"]
                                           for c, other in zip(runs["c"], runs[k], strict=True))
                      for k in ("a", "a'", "b", "floor")}
            rows.append((label, {key: median_round(results) for key, results in runs.items()},
                         ratios))
    table = Table("model", "path", "frames/s", "p50 ms", "p99 ms", "(c)/(a)", "(c)/(a')",
                  "(c)/(b)", "(c)/floor")
    for label, results, ratio in rows:
        for key, path_label in PATHS:
            result = results[key]
            ratios = ("", "", "", "")
            if key == "c":
                ratios = tuple(f"{ratio[k]:.2f}" for k in ("a", "a'", "b", "floor"))
            table.add_row(label if key == "a" else "", path_label, f"{result['fps']:.1f}",
                          f"{result['p50']:.2f}", f"{result['p99']:.2f}", *ratios)
    console.print(table)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(f"peak RSS of this process (all paths): {rss:.0f} MB. Agent latency is "
                  "from the camera's grab to the result, the others per loop iteration.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
