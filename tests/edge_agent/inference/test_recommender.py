"""Recommender: batched search within limits, offers that do not flap, guarded writes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import FeatureConfig, RecommendConfig
from edge_agent.inference.recommender import (
    Objective,
    Proposal,
    Recommender,
    RecommenderError,
    offer_refusal,
    require_dynamic_batch,
    resolve_objective,
)
from edge_agent.kernel.contract import (
    ModelRef,
    OutputSpec,
    RecommendationPayload,
    SetpointChange,
    TensorSpec,
)
from edge_agent.pipelines.setpoints import SetpointGuard
from tests.helpers import SAMPLE_MODEL, manifest_for

FEATURES = [FeatureConfig(tag=t) for t in ("z1", "z2", "speed", "humidity")]
CONTROLS = {"z1": {"min": 170, "max": 180, "step": 0.5, "max_change": 3},
            "z2": {"min": 178, "max": 192, "step": 0.5, "max_change": 4},
            "speed": {"min": 50, "max": 70, "step": 1, "max_change": 5}}
ROW = np.asarray([174.2, 183.0, 60.0, 50.0])
REF = ModelRef(name="m", version="1.0.0", sha256="0" * 64)


def recommend(**fields: object) -> RecommendConfig:
    return RecommendConfig.model_validate({"controls": CONTROLS,
                                           "objective": {"type": "minimise"}, **fields})


class Bowl:
    """A fake model: scrap lowest at z1=176, z2=186, speed=57; counts its batches."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32
        self.batches.append(len(batch))
        return (1.0 + 0.1 * (batch[:, 0] - 176) ** 2 + 0.05 * (batch[:, 1] - 186) ** 2
                + 0.02 * (batch[:, 2] - 57) ** 2)


def test_small_grids_are_searched_whole_in_one_batch() -> None:
    bowl = Bowl()
    proposal = Recommender(recommend(), FEATURES, Objective("minimise", "scrap"), bowl,
                           "scrap").search(ROW)
    assert bowl.batches == [1 + 13 * 17 * 11]  # now, then every setting within reach
    assert proposal.proposed == {"z1": 176.0, "z2": 186.0, "speed": 57.0}


def test_search_scores_all_candidates_in_two_batches_within_limits_and_steps() -> None:
    bowl = Bowl()
    config = recommend(controls={**CONTROLS, "z1": {**CONTROLS["z1"], "step": 0.1}})
    proposal = Recommender(config, FEATURES, Objective("minimise", "scrap"), bowl,
                           "scrap").search(ROW)
    assert len(bowl.batches) == 2 and bowl.batches[0] >= 10_000 > bowl.batches[1]
    assert proposal.scored == sum(bowl.batches)
    assert proposal.current == {"z1": pytest.approx(174.2), "z2": 183.0, "speed": 60.0}
    assert proposal.proposed == {"z1": 176.0, "z2": 186.0, "speed": 57.0}
    assert proposal.predicted_now == pytest.approx(1.0 + 0.1 * 1.8**2 + 0.05 * 9 + 0.02 * 9)
    assert proposal.predicted_after == pytest.approx(1.0)
    assert proposal.improvement == pytest.approx(proposal.predicted_now - 1.0)


def test_search_stays_within_max_change_and_hard_limits() -> None:
    controls = {**CONTROLS, "z2": {"min": 178, "max": 184.5, "step": 0.5, "max_change": 4},
                "speed": {"min": 50, "max": 70, "step": 1, "max_change": 1}}
    config = RecommendConfig.model_validate({"controls": controls,
                                             "objective": {"type": "minimise"}})
    proposal = Recommender(config, FEATURES, Objective("minimise", "scrap"), Bowl(),
                           "scrap").search(ROW)
    assert proposal.proposed["z2"] == 184.5  # hard max, below the best 186
    assert proposal.proposed["speed"] == 59.0  # one rpm at most from 60


def test_keeping_a_spec_with_margin_prefers_the_smallest_change() -> None:
    # Width grows with z1 only; the band with margin is [11.9, 12.1] -> z1 in [175, 177].
    def width(batch: np.ndarray) -> np.ndarray:
        return 12.0 + 0.1 * (batch[:, 0] - 176)

    objective = Objective("target", "width_mm", low=11.8, high=12.2, margin=0.1)
    config = recommend(objective={"type": "target", "low": 11.8, "high": 12.2, "margin": 0.1})
    proposal = Recommender(config, FEATURES, objective, width, "line").search(
        np.asarray([172.0, 183.0, 60.0, 50.0]))
    assert proposal.proposed == {"z1": 175.0, "z2": 183.0, "speed": 60.0}
    assert proposal.changed == {"z1": 175.0}
    assert proposal.predicted_after == pytest.approx(11.9)
    inside = Recommender(config, FEATURES, objective, width, "line").search(
        np.asarray([176.3, 183.0, 60.0, 50.0]))
    assert inside.changed == {} and inside.improvement == 0


def test_objective_target_uses_the_manifest_spec_and_says_so() -> None:
    config = recommend(objective={"type": "target", "margin": 0.05})
    objective = resolve_objective(config.objective, OutputSpec(target="width_mm", low=11.8,
                                                               high=12.2), ["width_mm"], "line")
    assert (objective.low, objective.high) == (11.8, 12.2)
    assert objective.describe() == "keep width_mm ≥ 11.85 and ≤ 12.15"
    with pytest.raises(RecommenderError, match="needs target or low/high"):
        resolve_objective(config.objective, None, ["width_mm"], "line")
    with pytest.raises(RecommenderError, match="objective output nope of pipeline line is not "
                                               "a model output; choose one of: width_mm"):
        resolve_objective(recommend(objective={"type": "minimise", "output": "nope"}).objective,
                          None, ["width_mm"], "line")


def test_control_that_is_not_a_feature_is_refused_with_the_choices() -> None:
    config = RecommendConfig.model_validate({
        "controls": {"zone9_temp_c": {"min": 1, "max": 2, "step": 1, "max_change": 1}},
        "objective": {"type": "minimise"}})
    with pytest.raises(RecommenderError, match="control zone9_temp_c is not a feature of "
                                               "pipeline scrap; controls must be among"):
        Recommender(config, FEATURES, Objective("minimise", "y"), Bowl(), "scrap")


def test_model_without_a_dynamic_batch_is_refused_at_load() -> None:
    manifest = manifest_for(SAMPLE_MODEL).model_copy(
        update={"inputs": [TensorSpec(name="features", dtype="float32", shape=[1, 6])]})
    with pytest.raises(RecommenderError, match="needs a dynamic batch dimension"):
        require_dynamic_batch(manifest)
    require_dynamic_batch(manifest_for(SAMPLE_MODEL))


def offered(proposed: dict[str, float], after: float) -> RecommendationPayload:
    return RecommendationPayload(
        pipeline="scrap", model=REF, target="scrap", objective="minimise scrap",
        changes=[SetpointChange(tag=t, current=ROW[0], proposed=v) for t, v in proposed.items()],
        predicted_now=3.0, predicted_after=after, inputs={}, expires_at=2000.0)


def proposal(proposed: dict[str, float], after: float, now: float = 3.0) -> Proposal:
    current = {"z1": 174.0, "z2": 183.0, "speed": 60.0}
    return Proposal(current, {**current, **proposed}, now, after, now - after, 10_000)


def test_offers_need_min_improvement_and_do_not_flap() -> None:
    config = recommend(min_improvement=0.2)
    objective = Objective("minimise", "scrap")
    refuse = lambda p, open_one=None, closed=None: offer_refusal(  # noqa: E731
        p, config, objective, open_one, closed, now=1000.0)
    assert refuse(proposal({"z1": 176.0}, 2.0)) is None
    assert "min_improvement 0.2" in refuse(proposal({"z1": 176.0}, 2.9))
    assert "current setting is the best" in refuse(proposal({}, 3.0))
    open_one = offered({"z1": 176.0}, 2.0)
    assert "already proposes this" in refuse(proposal({"z1": 176.5}, 1.5), open_one)
    assert "beats the open recommendation by only 0.1" in refuse(
        proposal({"z2": 186.0}, 1.9), open_one)
    assert refuse(proposal({"z2": 186.0}, 1.7), open_one) is None
    # Rejected 100 s ago: the same setting waits hold_s, a different one does not.
    assert "proposed again 900 s after" in refuse(proposal({"z1": 176.0}, 2.0), None,
                                                  (open_one, 900.0))
    assert refuse(proposal({"z1": 176.0}, 2.0), None, (open_one, 50.0)) is None
    assert refuse(proposal({"z2": 186.0}, 2.0), None, (open_one, 900.0)) is None


class Plc:
    def __init__(self, fail_on: str | None = None) -> None:
        self.values = {"z1": 174.0, "z2": 183.0, "speed": 60.0}
        self.writes: list[tuple[str, float]] = []
        self.fail_on = fail_on

    async def write(self, tag: str, value: float) -> float | None:
        if tag == self.fail_on:
            raise RuntimeError("BadNotWritable")
        self.writes.append((tag, value))
        previous, self.values[tag] = self.values[tag], value
        return previous


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def written_records(buffer: Buffer) -> list[dict]:
    batch = await buffer.next_batch(100)
    return [json.loads(r.payload_json) for r in batch if r.type == "setpoint_write"]


def guarded(tmp_path: Path, plc: Plc, clock: Clock, **fields: object) -> SetpointGuard:
    config = recommend(mode="auto", **fields)
    return SetpointGuard("scrap", config, plc.write, Buffer(tmp_path / "b.db", 10**7),
                         {"z1": "ns=2;s=z1", "z2": "ns=2;s=z2"}, clock)


def test_auto_mode_writes_within_limits_and_records_each_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        plc, clock = Plc(), Clock()
        guard = guarded(tmp_path, plc, clock)
        recommendation = offered({"z1": 176.0, "z2": 185.0}, 2.0)
        attempts = await guard.apply(recommendation, plc.values)
        assert [a.ok for a in attempts] == [True, True]
        assert plc.writes == [("z1", 176.0), ("z2", 185.0)]
        records = await written_records(guard._buffer)
        assert records[0] == {"recommendation": recommendation.id,
                              "pipeline": "scrap", "tag": "z1", "node": "ns=2;s=z1",
                              "value": 176.0, "previous": 174.0, "ok": True, "detail": ""}
        assert guard.writes_this_hour() == 1 and guard.last_write is not None

    asyncio.run(scenario())


@pytest.mark.parametrize(("proposed", "reason"), [
    ({"z1": 181.0}, "z1 181 is outside its limits 170..180"),
    ({"z1": 170.0}, "z1 would move 4 from its current 174; max_change is 3"),
    ({"humidity": 40.0}, "humidity is not a control of pipeline scrap"),
])
def test_setpoints_outside_limits_are_refused_and_nothing_is_written(
        tmp_path: Path, proposed: dict, reason: str) -> None:
    async def scenario() -> None:
        plc = Plc()
        guard = guarded(tmp_path, plc, Clock())
        attempts = await guard.apply(offered({"z2": 185.0, **proposed}, 2.0), plc.values)
        assert plc.writes == [] and not any(a.ok for a in attempts)
        records = await written_records(guard._buffer)
        assert len(records) == 2 and all(r["detail"] == reason for r in records)

    asyncio.run(scenario())


def test_writes_are_rate_limited(tmp_path: Path) -> None:
    async def scenario() -> None:
        plc, clock = Plc(), Clock()
        guard = guarded(tmp_path, plc, clock, auto={"max_writes_per_hour": 2,
                                                    "min_interval_s": 600})
        assert (await guard.apply(offered({"z1": 175.0}, 2.0), plc.values))[0].ok
        clock.now += 60
        early = await guard.apply(offered({"z1": 176.0}, 2.0), plc.values)
        assert early[0].detail == ("rate limit: last write 60 s ago, auto.min_interval_s is "
                                   "600")
        clock.now += 600
        assert (await guard.apply(offered({"z1": 176.0}, 2.0), plc.values))[0].ok
        clock.now += 700
        third = await guard.apply(offered({"z1": 177.0}, 2.0), plc.values)
        assert third[0].detail.startswith("rate limit: 2 writes in the last hour")
        clock.now += 3600
        assert (await guard.apply(offered({"z1": 177.0}, 2.0), plc.values))[0].ok
        assert plc.writes == [("z1", 175.0), ("z1", 176.0), ("z1", 177.0)]

    asyncio.run(scenario())


def test_advise_mode_never_writes(tmp_path: Path) -> None:
    async def scenario() -> None:
        plc = Plc()
        guard = SetpointGuard("scrap", recommend(), plc.write,
                              Buffer(tmp_path / "b.db", 10**7), None, Clock())
        attempts = await guard.apply(offered({"z1": 175.0}, 2.0), plc.values)
        assert plc.writes == [] and attempts[0].detail.startswith("advise mode")

    asyncio.run(scenario())


def test_writer_failure_is_recorded_and_later_setpoints_are_not_written(tmp_path: Path) -> None:
    async def scenario() -> None:
        plc = Plc(fail_on="z1")
        guard = guarded(tmp_path, plc, Clock())
        attempts = await guard.apply(offered({"z1": 175.0, "z2": 184.0}, 2.0), plc.values)
        assert plc.writes == []
        assert [(a.ok, a.detail) for a in attempts] == [
            (False, "writing z1 failed: BadNotWritable"),
            (False, "not written: writing z1 failed: BadNotWritable")]
        records = await written_records(guard._buffer)
        assert [r["ok"] for r in records] == [False, False]

    asyncio.run(scenario())


def test_a_restore_that_fails_too_is_recorded_with_what_the_line_now_runs(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        plc = Plc(fail_on="z2")
        guard = guarded(tmp_path, plc, Clock())

        async def writer(tag: str, value: float) -> float | None:
            if plc.writes:  # the first write went through, then the PLC went away
                plc.fail_on = tag
            return await plc.write(tag, value)

        guard._writer = writer
        attempts = await guard.apply(offered({"z1": 175.0, "z2": 184.0}, 2.0), plc.values)
        assert plc.writes == [("z1", 175.0)] and plc.values["z1"] == 175.0
        assert [(a.tag, a.ok) for a in attempts] == [("z1", True), ("z2", False), ("z1", False)]
        assert attempts[2].value == 174.0 and attempts[2].detail == (
            "restoring z1 to 174 failed: BadNotWritable; it stays at 175, check it on the line "
            "(after: writing z2 failed: BadNotWritable)")
        records = await written_records(guard._buffer)
        assert [r["ok"] for r in records] == [True, False, False]

    asyncio.run(scenario())
