"""Exact scoring of a tree-ensemble model over a grid of control settings, by table look-up.

A scikit-learn tree ensemble exported to ONNX (one `TreeEnsembleRegressor`) is a sum of leaf
values, and each leaf is reached inside a box of the input space. With the inputs that are not
controls held at their current values, the leaves that remain reachable and constrain the same
controls add up to one small table over those controls' levels. Scoring a candidate setting is
then a few table look-ups instead of hundreds of tree walks, with ONNX Runtime's float32
comparisons, so the numbers are the model's. A model of another shape is scored by ONNX Runtime
as usual (`TreeEnsemble.from_onnx` returns None).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

GridScore = Callable[[np.ndarray], np.ndarray]  # (N, controls) level indices -> (N,) predictions

_PASS_THROUGH = {"Cast", "Identity"}
_MODES = {"BRANCH_LEQ", "BRANCH_LT", "BRANCH_GT", "BRANCH_GTE"}


@dataclass(frozen=True)
class TreeEnsemble:
    """A single-output tree-ensemble regressor as leaf boxes: leaf i is reached exactly when
    low[i, f] < x[f] <= high[i, f] for every input f (float32, as ONNX Runtime compares)."""

    low: np.ndarray  # (leaves, inputs) float32
    high: np.ndarray  # (leaves, inputs) float32
    weight: np.ndarray  # (leaves,) float64, already scaled for AVERAGE
    base_value: float
    output_name: str

    @classmethod
    def from_onnx(cls, path: Path | str) -> TreeEnsemble | None:
        """The ensemble when the graph is one TreeEnsembleRegressor (then at most a Cast);
        None for any other model, which is then scored by ONNX Runtime."""
        graph = onnx.load(str(path), load_external_data=False).graph
        nodes = list(graph.node)
        if not nodes or nodes[0].op_type != "TreeEnsembleRegressor" \
                or any(n.op_type not in _PASS_THROUGH for n in nodes[1:]) \
                or len(graph.input) != 1 or len(graph.output) != 1 \
                or list(nodes[0].input) != [graph.input[0].name]:
            return None
        flowing = nodes[0].output[0]
        for node in nodes[1:]:
            if list(node.input) != [flowing]:
                return None
            flowing = node.output[0]
        if flowing != graph.output[0].name:
            return None
        dims = graph.input[0].type.tensor_type.shape.dim
        if len(dims) != 2 or not dims[1].HasField("dim_value"):
            return None
        try:
            return cls._read(nodes[0], dims[1].dim_value, flowing)
        except (_Unsupported, KeyError, ValueError) as exc:
            log.info("tree tables not used model=%s reason=%s", path, exc)
            return None

    @classmethod
    def _read(cls, node: onnx.NodeProto, inputs: int, output_name: str) -> TreeEnsemble:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("n_targets", 1) != 1:
            raise _Unsupported("more than one target")
        if _text(attrs.get("post_transform", b"NONE")) != "NONE":
            raise _Unsupported("a post transform")
        aggregate = _text(attrs.get("aggregate_function", b"SUM"))
        if aggregate not in ("SUM", "AVERAGE"):
            raise _Unsupported(f"aggregate {aggregate}")
        base = _floats(attrs, "base_values")
        if len(base) > 1:
            raise _Unsupported("several base values")
        modes = [_text(m) for m in attrs["nodes_modes"]]
        if unknown := {m for m in modes if m != "LEAF" and m not in _MODES}:
            raise _Unsupported(f"split modes {sorted(unknown)}")
        nodes = {(int(t), int(n)): i for i, (t, n) in
                 enumerate(zip(attrs["nodes_treeids"], attrs["nodes_nodeids"], strict=True))}
        values = _floats(attrs, "nodes_values").astype(np.float32)
        weights: dict[tuple[int, int], float] = {}
        for tree, leaf, weight in zip(attrs["target_treeids"], attrs["target_nodeids"],
                                      _floats(attrs, "target_weights"), strict=True):
            weights[(int(tree), int(leaf))] = weights.get((int(tree), int(leaf)), 0.0) + weight
        trees = sorted({tree for tree, _ in nodes})
        if any((tree, 0) not in nodes for tree in trees):
            raise _Unsupported("a tree without a node 0")
        lows, highs, leaf_weights = [], [], []
        for tree in trees:
            stack = [(0, np.full(inputs, -np.inf, np.float32), np.full(inputs, np.inf,
                                                                        np.float32))]
            while stack:
                node_id, low, high = stack.pop()
                i = nodes[(tree, node_id)]
                if modes[i] == "LEAF":
                    lows.append(low)
                    highs.append(high)
                    leaf_weights.append(weights.get((tree, node_id), 0.0))
                    continue
                feature = int(attrs["nodes_featureids"][i])
                if feature >= inputs:
                    raise _Unsupported(f"a split on input {feature} of {inputs}")
                cut = _cut(modes[i], values[i])
                true_id = int(attrs["nodes_truenodeids"][i])
                false_id = int(attrs["nodes_falsenodeids"][i])
                lower_id, upper_id = (true_id, false_id) if modes[i] in ("BRANCH_LEQ",
                                                                        "BRANCH_LT") \
                    else (false_id, true_id)
                narrowed = high.copy()
                narrowed[feature] = min(high[feature], cut)
                raised = low.copy()
                raised[feature] = max(low[feature], cut)
                stack.append((lower_id, low, narrowed))
                stack.append((upper_id, raised, high))
        scale = 1.0 / len(trees) if aggregate == "AVERAGE" else 1.0
        return cls(np.asarray(lows), np.asarray(highs), np.asarray(leaf_weights) * scale,
                   float(base[0]) if len(base) else 0.0, output_name)

    def grid_scorer(self, base: np.ndarray, columns: Sequence[int],
                    levels: Sequence[np.ndarray]) -> GridScore | None:
        """A scorer of settings given as level indices: control `k` (input column
        `columns[k]`) at `levels[k][index[:, k]]` (levels sorted), the other inputs held at
        `base`. None when `base` has a missing value (the model's own missing-value branches
        then decide)."""
        row = np.asarray(base, dtype=np.float32).reshape(-1)
        if not np.isfinite(row).all():
            return None
        held = np.setdiff1d(np.arange(len(row)), np.asarray(columns))
        reachable = ((self.low[:, held] < row[held]) & (row[held] <= self.high[:, held])).all(1)
        low, high, weight = self.low[reachable], self.high[reachable], self.weight[reachable]
        sorted_levels = [np.asarray(lv, dtype=np.float64) for lv in levels]
        sizes = np.asarray([len(lv) for lv in sorted_levels])
        # Leaf i is reached for the level indices lo[i, k] <= j < hi[i, k] of each control k.
        lo = np.stack([np.searchsorted(lv.astype(np.float32), low[:, c], side="right")
                       for lv, c in zip(sorted_levels, columns, strict=True)], axis=1)
        hi = np.stack([np.searchsorted(lv.astype(np.float32), high[:, c], side="right")
                       for lv, c in zip(sorted_levels, columns, strict=True)], axis=1)
        live = (lo < hi).all(axis=1) & (weight != 0)
        lo, hi, weight = lo[live], hi[live], weight[live]
        constrained = (lo > 0) | (hi < sizes)
        patterns = constrained @ (1 << np.arange(len(sizes)))
        constant = float(weight[patterns == 0].sum())
        homes = _table_homes([int(p) for p in np.unique(patterns[patterns > 0])])
        home_of = np.asarray([homes.get(int(p), 0) for p in patterns])
        tables = []
        for pattern in sorted(set(homes.values())):
            members = home_of == pattern
            group = [k for k in range(len(sizes)) if pattern >> k & 1]
            tables.append(_GroupTable.build(group, lo[members][:, group], hi[members][:, group],
                                            weight[members], sizes))

        def score(index: np.ndarray) -> np.ndarray:
            index = np.asarray(index, dtype=np.intp)
            total = np.full(len(index), constant + self.base_value)
            for table in tables:
                total += table.look_up(index)
            return total.astype(np.float32)

        return score


@dataclass(frozen=True)
class _GroupTable:
    """The summed leaves that constrain the same controls, over bins of their levels (the
    levels between two consecutive cuts of these leaves all give the same sum)."""

    group: list[int]
    offsets: list[np.ndarray]  # per control of the group: level index -> its part of the
    table: np.ndarray  # flat position in this table (C order over the group's bins)

    @classmethod
    def build(cls, group: list[int], lo: np.ndarray, hi: np.ndarray, weight: np.ndarray,
              sizes: np.ndarray) -> _GroupTable:
        cuts = [np.unique(np.concatenate([lo[:, j], hi[:, j], [0, sizes[k]]]))
                for j, k in enumerate(group)]
        bin_of_level = [np.searchsorted(c, np.arange(sizes[k]), side="right") - 1
                        for c, k in zip(cuts, group, strict=True)]
        lo_bin = np.stack([np.searchsorted(c, lo[:, j]) for j, c in enumerate(cuts)], axis=1)
        hi_bin = np.stack([np.searchsorted(c, hi[:, j]) for j, c in enumerate(cuts)], axis=1)
        shape = tuple(len(c) - 1 for c in cuts)
        # Each box adds its weight at its corners with alternating signs; prefix sums spread it.
        padded = tuple(n + 1 for n in shape)
        corners = np.asarray(list(product((0, 1), repeat=len(group))), dtype=bool)
        at = np.where(corners[None], hi_bin[:, None, :], lo_bin[:, None, :]) @ _strides(padded)
        signs = np.where(corners.sum(axis=1) % 2, -1.0, 1.0)
        diff = np.bincount(at.reshape(-1), (weight[:, None] * signs).reshape(-1),
                           minlength=math.prod(padded)).reshape(padded)
        for axis in range(len(group)):
            np.cumsum(diff, axis=axis, out=diff)
        table = np.ascontiguousarray(diff[tuple(slice(0, n) for n in shape)]).reshape(-1)
        strides = _strides(shape)
        return cls(group, [b * stride for b, stride in zip(bin_of_level, strides, strict=True)],
                   table)

    def look_up(self, index: np.ndarray) -> np.ndarray:
        k, *rest = self.group
        flat = self.offsets[0][index[:, k]]
        for offset, k in zip(self.offsets[1:], rest, strict=True):
            flat += offset[index[:, k]]
        return self.table[flat]


def _strides(shape: tuple[int, ...]) -> np.ndarray:
    """Flat-index strides of a C-order array of `shape`."""
    return np.cumprod((*shape[1:], 1)[::-1])[::-1]


def _table_homes(patterns: list[int]) -> dict[int, int]:
    """For each set of controls (a bit pattern), the table that holds its leaves: one over a
    superset of its controls when there is one (fewer tables, each a little finer)."""
    homes: dict[int, int] = {}
    kept: list[int] = []
    for pattern in sorted(patterns, key=lambda p: -p.bit_count()):
        home = next((q for q in kept if q & pattern == pattern), None)
        if home is None:
            kept.append(pattern)
            home = pattern
        homes[pattern] = home
    return homes


class _Unsupported(Exception):
    """The tree ensemble uses a feature that the tables do not reproduce exactly."""


def _cut(mode: str, threshold: np.float32) -> np.float32:
    """The split as `x <= cut` (the lower side) against `x > cut`, for float32 x: `x < t` is
    `x <= the float32 just below t`."""
    if mode in ("BRANCH_LEQ", "BRANCH_GT"):
        return threshold
    return np.nextafter(threshold, np.float32(-np.inf), dtype=np.float32)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _floats(attrs: dict[str, object], name: str) -> np.ndarray:
    """A float list attribute, or its `_as_tensor` form (ai.onnx.ml opset 3)."""
    if f"{name}_as_tensor" in attrs:
        return numpy_helper.to_array(attrs[f"{name}_as_tensor"]).astype(np.float64).reshape(-1)
    return np.asarray(attrs.get(name, []), dtype=np.float64)
