"""Benchmark: the agent's setpoint recommender against a naive per-candidate loop.

For 3, 4 and 5 controllable tags, the recommender (`Recommender.search`, exactly as the
pipeline builds and calls it: >= 10,000 candidates, then a finer set around the best) against
`session.run` once per candidate over the same candidate settings. With the committed scrap
model (gradient boosting, 200 trees, 6 features), which the agent scores from its tree tables
(checked against ONNX Runtime on 32 settings each search), and an MLP made here
(6 -> hidden -> hidden -> 1, random weights; `--hidden`, default 64), scored in one batched run.
Prints the median of `--rounds` in milliseconds and the ratio naive / agent. Targets: under
100 ms, and at least 20x the naive loop.
Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_recommender.py
    .venv/bin/python tests/benchmarks/bench_recommender.py --rounds 7 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.config import FeatureConfig, RecommendConfig  # noqa: E402
from edge_agent.inference.recommender import Objective, Recommender  # noqa: E402
from edge_agent.inference.tree_tables import TreeEnsemble  # noqa: E402

console = Console(width=110)
FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
NOW = np.asarray([173.98, 182.26, 192.08, 159.92, 60.27, 45.7])  # the model's golden input
CONTROLS = {
    "zone1_temp_c": {"min": 170, "max": 180, "step": 0.1, "max_change": 3},
    "zone2_temp_c": {"min": 178, "max": 192, "step": 0.1, "max_change": 4},
    "zone3_temp_c": {"min": 188, "max": 200, "step": 0.1, "max_change": 3},
    "screw_speed_rpm": {"min": 50, "max": 72, "step": 0.5, "max_change": 5},
    "melt_pressure_bar": {"min": 130, "max": 180, "step": 1, "max_change": 10},
}


def mlp(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """A 6 -> hidden -> hidden -> 1 MLP with random weights and a dynamic batch."""
    rng = np.random.default_rng(seed)
    mean = NOW.astype(np.float32)
    weights = {"mean": mean, "w1": rng.normal(0, 0.4, (6, hidden)),
               "b1": np.zeros(hidden), "w2": rng.normal(0, 1 / np.sqrt(hidden), (hidden, hidden)),
               "b2": np.zeros(hidden), "w3": rng.normal(0, 1 / np.sqrt(hidden), (hidden, 1)),
               "b3": np.full(1, 2.0)}
    nodes = [helper.make_node("Sub", ["features", "mean"], ["x0"]),
             helper.make_node("Gemm", ["x0", "w1", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["scrap_rate_pct"])]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("scrap_rate_pct", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def session_for(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


class RecordingGrid:
    """The model's tree tables as the agent uses them, keeping every scored setting (as full
    input rows) for the naive loop."""

    def __init__(self, tables: TreeEnsemble, seen: list[np.ndarray]) -> None:
        self._tables, self._seen = tables, seen

    def grid_scorer(self, base, columns, levels):
        score = self._tables.grid_scorer(base, columns, levels)
        if score is None:
            return None

        def recorded(index: np.ndarray) -> np.ndarray:
            self._seen.append((base, columns, levels, index))  # made into rows after timing
            return score(index)

        return recorded


def recommender_for(session: ort.InferenceSession, path: Path, controls: list[str],
                    seen: list[np.ndarray]) -> Recommender:
    """The recommender as the process pipeline builds it: tree tables when the model is a
    tree ensemble, batched runs otherwise; `seen` collects the candidate settings scored."""
    tables = TreeEnsemble.from_onnx(path)

    def predict(batch: np.ndarray) -> np.ndarray:
        if tables is None:
            seen.append(batch)
        return session.run(None, {"features": batch})[0][:, 0]

    config = RecommendConfig.model_validate({
        "controls": {tag: CONTROLS[tag] for tag in controls},
        "objective": {"type": "minimise"}, "candidates": 10_000})
    return Recommender(config, [FeatureConfig(tag=t) for t in FEATURES],
                       Objective("minimise", "scrap_rate_pct"), predict, "bench",
                       grid=RecordingGrid(tables, seen) if tables else None)


def as_rows(seen: np.ndarray | tuple) -> np.ndarray:
    """Scored candidates as model input rows (tables record level indices)."""
    if isinstance(seen, np.ndarray):
        return seen
    base, columns, levels, index = seen
    rows = np.repeat(np.asarray(base, np.float32)[None], len(index), axis=0)
    rows[:, list(columns)] = np.stack([lv[index[:, k]] for k, lv in enumerate(levels)], axis=1)
    return rows


def naive(session: ort.InferenceSession, batches: list[np.ndarray]) -> float:
    """One session.run per candidate, then the best: as a first version would do it."""
    best = np.inf
    for batch in batches:
        for row in batch:
            value = float(session.run(None, {"features": row[None, :]})[0][0, 0])
            best = min(best, value)
    return best


def measure(name: str, path: Path, controls: list[str], rounds: int,
            threads: int) -> dict[str, object]:
    session = session_for(path, threads)
    agent_ms, naive_ms = [], []
    scored, proposal = 0, None
    for _ in range(rounds):
        seen: list[np.ndarray] = []
        recommender = recommender_for(session, path, controls, seen)
        started = time.perf_counter()
        proposal = recommender.search(NOW)
        agent_ms.append((time.perf_counter() - started) * 1000)
        candidates = [as_rows(item) for item in seen]
        scored = sum(len(b) for b in candidates)
        started = time.perf_counter()
        naive(session, candidates)
        naive_ms.append((time.perf_counter() - started) * 1000)
    assert proposal is not None
    agent, slow = statistics.median(agent_ms), statistics.median(naive_ms)
    return {"model": name, "controls": len(controls), "candidates": scored,
            "agent_ms": agent, "naive_ms": slow, "ratio": slow / agent,
            "effect": f"{proposal.predicted_now:.3f} -> {proposal.predicted_after:.3f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="median of this many runs")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--hidden", type=int, default=64, help="width of the MLP's layers")
    args = parser.parse_args()
    sets = {3: ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c"],
            4: ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "screw_speed_rpm"],
            5: list(CONTROLS)}
    with tempfile.TemporaryDirectory() as folder:
        models = {"scrap (committed GBR)": REPO / "sample_data" / "scrap_model.onnx",
                  f"MLP 6-{args.hidden}-{args.hidden}-1": mlp(Path(folder) / "mlp.onnx",
                                                              args.hidden)}
        rows = [measure(name, path, controls, args.rounds, args.threads)
                for name, path in models.items() for controls in sets.values()]
    table = Table(title=f"Setpoint search, median of {args.rounds} runs, "
                        f"{args.threads} ORT thread(s)")
    for column in ("model", "controls", "candidates", "agent ms", "naive ms", "naive/agent",
                   "predicted now -> after"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(str(row["model"]), str(row["controls"]), f"{row['candidates']:,}",
                      f"{row['agent_ms']:.1f}", f"{row['naive_ms']:.0f}",
                      f"{row['ratio']:.0f}x", str(row["effect"]))
    console.print(table)
    console.print("Targets: agent under 100 ms and at least 20x the naive loop.")


if __name__ == "__main__":
    main()
