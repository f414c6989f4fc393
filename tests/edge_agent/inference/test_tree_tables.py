"""Tree tables: a tree ensemble's scores over a grid of settings, exactly as ONNX Runtime's."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edge_agent.config import FeatureConfig, RecommendConfig
from edge_agent.inference.recommender import Objective, Recommender
from edge_agent.inference.tree_tables import TreeEnsemble
from tests.helpers import SAMPLE_MODEL

NOW = np.asarray([173.98, 182.26, 192.08, 159.92, 60.27, 45.7])
SAMPLE_CONTROLS = {0: (170, 180, 0.1, 3), 1: (178, 192, 0.1, 4), 2: (188, 200, 0.1, 3),
                   4: (50, 72, 0.5, 5), 3: (130, 180, 1, 10)}


def run_onnx(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: rows.astype(np.float32)})[0]).reshape(-1)


def rows_for(base: np.ndarray, columns: list[int], levels: list[np.ndarray],
             index: np.ndarray) -> np.ndarray:
    rows = np.repeat(base[None].astype(np.float32), len(index), axis=0)
    for k, column in enumerate(columns):
        rows[:, column] = levels[k][index[:, k]]
    return rows


def random_index(levels: list[np.ndarray], count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, len(lv), count) for lv in levels], axis=1)


def assert_same_as_onnx_runtime(path: Path, base: np.ndarray, columns: list[int],
                                levels: list[np.ndarray], count: int = 3000) -> None:
    ensemble = TreeEnsemble.from_onnx(path)
    assert ensemble is not None
    score = ensemble.grid_scorer(base, columns, levels)
    assert score is not None
    index = random_index(levels, count)
    expected = run_onnx(path, rows_for(base, columns, levels, index))
    np.testing.assert_allclose(score(index), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("columns", [[1], [1, 4], [0, 1, 2], [0, 1, 2, 4], [0, 1, 2, 4, 3]])
def test_committed_scrap_model_scores_as_onnx_runtime_for_one_to_five_controls(columns):
    levels = []
    for c in columns:
        low, high, step, reach = SAMPLE_CONTROLS[c]
        grid = np.arange(max(low, NOW[c] - reach), min(high, NOW[c] + reach) + 1e-9, step)
        levels.append(np.unique(np.append(np.round(grid, 9), NOW[c])))
    assert_same_as_onnx_runtime(SAMPLE_MODEL, NOW, columns, levels)


def sklearn_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (600, 4)).astype(np.float32)
    y = np.sin(x[:, 0]) + 0.3 * x[:, 1] * (x[:, 2] > 5) + 0.1 * x[:, 3]
    return x, y


def export(model: object, path: Path) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, 4]))],
                          target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def threshold_levels(ensemble: TreeEnsemble, column: int, extra: int = 12) -> np.ndarray:
    """Levels that include split thresholds themselves (and their float32 neighbours): the
    boundaries where a comparison off by one ulp would show."""
    cuts = np.unique(np.concatenate([ensemble.low[:, column], ensemble.high[:, column]]))
    cuts = cuts[np.isfinite(cuts)][:extra].astype(np.float32)
    up = np.nextafter(cuts, np.float32(np.inf))
    return np.unique(np.concatenate([cuts, up, np.linspace(0, 10, 21, dtype=np.float32)])
                     ).astype(np.float64)


@pytest.mark.parametrize("kind", ["gradient_boosting", "random_forest", "decision_tree"])
def test_scikit_learn_tree_models_score_as_onnx_runtime_on_their_own_thresholds(tmp_path, kind):
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.tree import DecisionTreeRegressor

    model = {"gradient_boosting": GradientBoostingRegressor(n_estimators=60, max_depth=3),
             "random_forest": RandomForestRegressor(n_estimators=20, max_depth=5,
                                                    random_state=0),
             "decision_tree": DecisionTreeRegressor(max_depth=6)}[kind]
    x, y = sklearn_data()
    path = export(model.fit(x, y), tmp_path / f"{kind}.onnx")
    ensemble = TreeEnsemble.from_onnx(path)
    assert ensemble is not None
    columns = [0, 2]
    levels = [threshold_levels(ensemble, c) for c in columns]
    assert_same_as_onnx_runtime(path, np.asarray([3.3, 4.4, 5.5, 6.6]), columns, levels)


def hand_tree(path: Path, mode: str) -> Path:
    """One tree: input 0 against 2.5 with `mode`, then input 1 against 1.0 (LEQ)."""
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0] * 5, nodes_nodeids=[0, 1, 2, 3, 4],
        nodes_featureids=[0, 1, 0, 0, 0], nodes_values=[2.5, 1.0, 0, 0, 0],
        nodes_modes=[mode, "BRANCH_LEQ", "LEAF", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 3, 0, 0, 0], nodes_falsenodeids=[2, 4, 0, 0, 0],
        nodes_hitrates=[1.0] * 5, nodes_missing_value_tracks_true=[0] * 5,
        target_ids=[0, 0, 0], target_nodeids=[2, 3, 4], target_treeids=[0, 0, 0],
        target_weights=[10.0, 20.0, 30.0], base_values=[0.5])
    graph = helper.make_graph(
        [node], "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("mode", ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GT", "BRANCH_GTE"])
def test_every_split_mode_matches_onnx_runtime_at_the_threshold(tmp_path, mode):
    path = hand_tree(tmp_path / "hand.onnx", mode)
    levels = [np.asarray([2.0, 2.5, np.nextafter(np.float32(2.5), np.float32(3)), 3.0]),
              np.asarray([0.5, 1.0, 1.5])]
    ensemble = TreeEnsemble.from_onnx(path)
    index = np.stack(np.meshgrid(range(4), range(3), indexing="ij"), -1).reshape(-1, 2)
    expected = run_onnx(path, rows_for(np.zeros(2), [0, 1], levels, index))
    np.testing.assert_allclose(ensemble.grid_scorer(np.zeros(2), [0, 1], levels)(index),
                               expected)
    # and with input 0 held: one branch is taken at its value, as ORT takes it
    for held in (2.5, 3.0):
        rows = rows_for(np.asarray([held, 0.0]), [1], levels[1:], index[:3, 1:])
        np.testing.assert_allclose(
            ensemble.grid_scorer(np.asarray([held, 0.0]), [1], levels[1:])(index[:3, 1:]),
            run_onnx(path, rows))


def test_models_that_are_not_one_tree_ensemble_have_no_tables(tmp_path):
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    x, y = sklearn_data()
    linear = export(LinearRegression().fit(x, y), tmp_path / "linear.onnx")
    scaled_tree = export(make_pipeline(StandardScaler(), DecisionTreeRegressor()).fit(x, y),
                         tmp_path / "scaled_tree.onnx")
    assert TreeEnsemble.from_onnx(linear) is None
    assert TreeEnsemble.from_onnx(scaled_tree) is None


def test_a_missing_held_input_leaves_the_scoring_to_the_model():
    ensemble = TreeEnsemble.from_onnx(SAMPLE_MODEL)
    row = NOW.copy()
    row[5] = np.nan
    assert ensemble.grid_scorer(row, [1], [np.asarray([180.0, 181.0])]) is None


def scrap_recommender(predict, grid) -> Recommender:
    config = RecommendConfig.model_validate({
        "controls": {"zone2_temp_c": {"min": 178, "max": 192, "step": 0.1, "max_change": 4},
                     "screw_speed_rpm": {"min": 50, "max": 72, "step": 0.5, "max_change": 5},
                     "zone1_temp_c": {"min": 170, "max": 180, "step": 0.1, "max_change": 3}},
        "objective": {"type": "minimise"}})
    features = [FeatureConfig(tag=t) for t in (
        "zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar", "screw_speed_rpm",
        "ambient_humidity_pct")]
    return Recommender(config, features, Objective("minimise", "scrap_rate_pct"), predict,
                       "scrap", grid=grid)


def test_recommender_scores_a_tree_model_from_its_tables_and_checks_them():
    batches: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        batches.append(len(batch))
        return run_onnx(SAMPLE_MODEL, batch)

    recommender = scrap_recommender(predict, TreeEnsemble.from_onnx(SAMPLE_MODEL))
    assert recommender.scoring == "tree tables"
    proposal = recommender.search(NOW)
    assert batches == [32]  # the check against the model; the 11,000 candidates from tables
    assert proposal.scored > 10_000
    row = NOW.copy()
    for tag, column in (("zone1_temp_c", 0), ("zone2_temp_c", 1), ("screw_speed_rpm", 4)):
        row[column] = proposal.proposed[tag]
    assert proposal.predicted_after == pytest.approx(float(run_onnx(SAMPLE_MODEL, row[None])[0]),
                                                     abs=1e-5)
    assert proposal.predicted_now == pytest.approx(float(run_onnx(SAMPLE_MODEL, NOW[None])[0]),
                                                   abs=1e-5)
    assert proposal.improvement > 0.5


class WrongTables:
    def grid_scorer(self, base, columns, levels):
        return lambda index: np.full(len(index), -100.0)


def test_tables_that_disagree_with_the_model_are_dropped_with_an_error(caplog):
    batches: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        batches.append(len(batch))
        return run_onnx(SAMPLE_MODEL, batch)

    recommender = scrap_recommender(predict, WrongTables())
    with caplog.at_level(logging.ERROR):
        proposal = recommender.search(NOW)
    assert "tree tables disagree with the model" in caplog.text
    assert recommender.scoring == "batched model runs"
    assert batches[:2] == [32, 10_001] and len(batches) == 3  # check, coarse, refined
    assert proposal.predicted_after > 0
