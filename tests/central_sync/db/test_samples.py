"""Sample review in the database: samples projected at ingest once, the queue's order and key
paging, filters, labels checked against the model's classes and audited, the awaiting count."""

from __future__ import annotations

import pytest
from central_helpers import Inbox, run
from review_helpers import defect_batch
from sample_helpers import sample_batch, vision_manifest

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.review import DefectFilter
from central_sync.db.samples import LabelRefused, SampleCursor, SampleFilter, UnknownSample
from central_sync.service import CentralService
from edge_agent.kernel.contract import Topics, encode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import wait_until_async

# seq, predicted class, confidence: scratch is common (5), pit rarer (2), stain rarest (1).
QUEUE = [(1, "scratch", 0.5), (2, "scratch", 0.42), (3, "scratch", 0.55), (4, "scratch", 0.55),
         (5, "scratch", 0.55), (6, "pit", 0.5), (7, "pit", 0.6), (8, "stain", 0.5)]
# least confident first; at 0.5 the rarest class first (stain, pit, scratch); then the oldest
QUEUE_ORDER = [2, 8, 6, 1, 3, 4, 5, 7]


def _pages(db: CentralDB, filters: SampleFilter, size: int) -> list[int]:
    seen, after = [], None
    while page := db.list_samples(filters, size, after):
        seen += [s.seq for s in page]
        after = page[-1].cursor
    return seen


def test_sample_records_are_projected_at_ingest_each_once(db: CentralDB) -> None:
    batch = sample_batch("gw-1", QUEUE)
    db.store_batch(batch)
    db.store_batch(batch)  # resent: kept once
    db.store_batch(defect_batch("gw-1", range(20, 23)))  # defects stay defects
    samples = db.list_samples(SampleFilter(), 100)
    assert sorted(s.seq for s in samples) == [s for s, _, _ in QUEUE]
    first = db.get_sample("gw-1", 1)
    assert first is not None
    assert (first.label, first.confidence, first.reason, first.camera, first.model_name,
            first.model_version, first.true_label) == (
        "scratch", 0.5, "uncertain", "strip-camera", "surface-defects", "1.0.0", None)
    assert db.samples_awaiting() == 8
    assert sorted(d.seq for d in db.list_defects(DefectFilter(), 100)) == [20, 21, 22]


def test_an_uplinked_sample_record_is_stored_and_acked_once(
        central_config: CentralConfig) -> None:
    async def scenario() -> None:
        broker, topics = MemoryBroker(), Topics()
        service = CentralService(central_config, MemoryTransport(broker))
        await service.start()
        device, acks = MemoryTransport(broker), Inbox()
        await device.start()
        await device.subscribe(topics.ack("gw-1"), acks)
        batch = sample_batch("gw-1", [(1, "pit", 0.48), (2, "stain", 0.51)])
        await device.publish(topics.uplink("gw-1"), encode(batch))
        await device.publish(topics.uplink("gw-1"), encode(batch))  # no ack seen: sent again
        await wait_until_async(lambda: len(acks.messages) >= 2, what="two acks")
        samples = await service.db_call(service.db.list_samples, SampleFilter(), 10)
        assert [(s.seq, s.label) for s in samples] == [(1, "pit"), (2, "stain")]
        await service.stop()
        await device.stop()

    run(scenario())


def test_queue_puts_unlabelled_first_then_least_confident_then_rarest_class(
        db: CentralDB) -> None:
    db.add_model(vision_manifest(), published_by="dana")
    db.store_batch(sample_batch("gw-1", QUEUE))
    assert [s.seq for s in db.list_samples(SampleFilter(), 100)] == QUEUE_ORDER
    assert {s.seq: s.rarity for s in db.list_samples(SampleFilter(), 100)}[8] == 1
    db.label_sample("gw-1", 2, "ok", by="anna")  # the least confident is done: last now
    assert [s.seq for s in db.list_samples(SampleFilter(), 100)] == [*QUEUE_ORDER[1:], 2]
    for size in (1, 3, 5):
        assert _pages(db, SampleFilter(), size) == [*QUEUE_ORDER[1:], 2]


def test_paging_goes_on_where_it_was_while_the_reviewer_labels(db: CentralDB) -> None:
    db.add_model(vision_manifest(), published_by="dana")
    db.store_batch(sample_batch("gw-1", QUEUE))
    page = db.list_samples(SampleFilter(), 3)
    for sample in page:
        db.label_sample(sample.device_id, sample.seq, "pit", by="anna")
    rest = db.list_samples(SampleFilter(), 3, page[-1].cursor)
    assert [s.seq for s in rest] == QUEUE_ORDER[3:6]  # nothing skipped, nothing again
    assert SampleCursor.parse(rest[-1].cursor.text()) == rest[-1].cursor


def test_filters_narrow_the_queue(db: CentralDB) -> None:
    db.add_model(vision_manifest("1.1.0"), published_by="dana")
    db.store_batch(sample_batch("gw-1", QUEUE))
    db.store_batch(sample_batch("gw-2", [(1, "pit", 0.9), (2, "scratch", 0.95)], "random",
                                "edge-camera", "1.1.0"))
    db.label_sample("gw-2", 1, "ok", by="anna")

    def seqs(**what: object) -> list[tuple[str, int]]:
        return [(s.device_id, s.seq) for s in db.list_samples(SampleFilter(**what), 100)]

    assert seqs(device_id="gw-2") == [("gw-2", 2), ("gw-2", 1)]
    assert seqs(camera="edge-camera") == seqs(reason="random") == seqs(model_version="1.1.0")
    assert seqs(label="pit") == [("gw-1", 6), ("gw-1", 7), ("gw-2", 1)]
    assert seqs(labelled=True) == [("gw-2", 1)]
    assert len(seqs(labelled=False)) == 9 == db.samples_awaiting()
    assert seqs(device_id="gw-1", reason="random") == []
    assert db.sample_choices()["camera"] == ["edge-camera", "strip-camera"]


def test_labels_are_the_models_classes_or_ok_and_are_audited(db: CentralDB) -> None:
    db.add_model(vision_manifest(), published_by="dana")
    db.store_batch(sample_batch("gw-1", QUEUE))
    db.store_batch(sample_batch("gw-3", [(1, "pit", 0.5)], version="9.9.9"))  # unpublished
    labelled = db.label_sample("gw-1", 1, "stain", by="anna")
    assert (labelled.true_label, labelled.labelled_by) == ("stain", "anna")
    assert labelled.labelled_at is not None
    assert db.label_sample("gw-1", 2, "ok", by="anna").true_label == "ok"
    assert db.label_sample("gw-1", 1, "scratch", by="ben").true_label == "scratch"  # latest
    assert db.samples_awaiting() == 7
    with pytest.raises(LabelRefused) as refused:
        db.label_sample("gw-1", 3, "dent", by="anna")
    assert str(refused.value) == ("'dent' is not a class of model surface-defects 1.0.0; "
                                  "choose one of scratch, pit, stain, ok")
    with pytest.raises(LabelRefused, match="not published on central"):
        db.label_sample("gw-3", 1, "pit", by="anna")
    assert db.label_sample("gw-3", 1, "ok", by="anna").true_label == "ok"
    with pytest.raises(UnknownSample):
        db.label_sample("gw-9", 1, "ok", by="anna")
    assert db.get_sample("gw-1", 3).true_label is None  # type: ignore[union-attr]
    entries = [(e["actor"], e["subject"], e["detail"]) for e in db.list_audit()
               if e["action"] == "sample.label"]
    assert ("ben", "gw-1/1", "scratch (model said scratch 0.50)") in entries
    assert len(entries) == 4
    assert db.model_classes("surface-defects", "1.0.0") == ["scratch", "pit", "stain"]
    assert db.model_classes("surface-defects", "9.9.9") is None

