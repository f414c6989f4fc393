"""Dataset versions: labelled defects and samples frozen by content, their ids, versions,
splits, boxes in the stored image's pixels, refusals, and images that outlive their records."""

from __future__ import annotations

import hashlib

import pytest
from dataset_helpers import label_sample, labelled_line, payload, sample_image, store

from central_sync import datasets
from central_sync.datasets import (
    DatasetError,
    DatasetManifest,
    DatasetSelection,
    DatasetTooLarge,
    EmptySelection,
    NothingNewToFreeze,
    create_dataset,
    diff_manifests,
    load_crop,
    parse_dataset_ref,
    split_of,
)
from central_sync.db import CentralDB

DEVICE = "line1-gw1"
EVERYTHING = DatasetSelection()


def test_labelled_defects_and_samples_are_frozen_with_the_reviewed_class(
        db: CentralDB, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.freeze, "PAGE", 2)  # several pages of each origin
    labelled_line(db)
    version = create_dataset(db, "surface-labels", EVERYTHING, "quality-eng")
    assert (version.ref, version.version, version.created_by) == (
        "surface-labels@1", 1, "quality-eng")
    manifest = version.manifest
    assert [(i.source, i.origin, i.label) for i in manifest.items] == [
        ("line1-gw1/1", "defect", "scratch"),  # confirmed: the model's class
        ("line1-gw1/2", "defect", "pit"),
        ("line1-gw1/3", "defect", "stain"),  # relabelled: the reviewer's
        ("line1-gw1/4", "defect", "ok"),  # false alarm
        ("line1-gw1/6", "sample", "ok"),  # samples: the reviewer's class
        ("line1-gw1/7", "sample", "pit")]
    assert manifest.kind == "classification" and manifest.labels == ("ok", "pit", "scratch",
                                                                     "stain")
    assert sum(sum(c.values()) for c in manifest.counts.values()) == 6
    assert "% 100" in manifest.split_rule and manifest.selection == {}
    for item in manifest.items:
        stored = db.dataset_image(item.image_sha256)
        assert stored is not None and hashlib.sha256(stored).hexdigest() == item.image_sha256
        assert item.split == split_of(item.image_sha256) and item.roi_box is None
    assert version.dataset_id == hashlib.sha256(manifest.canonical_json().encode()).hexdigest()
    assert db.find_dataset("surface-labels@1").manifest == manifest
    [summary] = db.list_datasets()
    assert (summary.ref, summary.items, summary.labels, summary.dataset_id) == (
        "surface-labels@1", 6, ("ok", "pit", "scratch", "stain"), version.dataset_id)
    audit = [e for e in db.list_audit() if e["action"] == "dataset.create"]
    assert [(e["actor"], e["subject"]) for e in audit] == [("quality-eng", "surface-labels@1")]
    assert version.dataset_id in audit[0]["detail"]


def test_same_inputs_give_the_same_id_and_nothing_new_is_refused(db: CentralDB) -> None:
    labelled_line(db)
    first = create_dataset(db, "surface-labels", EVERYTHING, "a")
    with pytest.raises(NothingNewToFreeze, match=r"nothing new to freeze: the selection gives "
                       r"exactly surface-labels@1 \(id " + first.dataset_id[:12]):
        create_dataset(db, "surface-labels", EVERYTHING, "b")
    other = create_dataset(db, "copy", EVERYTHING, "b")  # author and name are not in the id
    assert (other.ref, other.dataset_id) == ("copy@1", first.dataset_id)
    assert [d.ref for d in db.list_datasets()] == ["copy@1", "surface-labels@1"]


def test_a_relabel_makes_a_new_version_whose_diff_shows_it(db: CentralDB) -> None:
    labelled_line(db)
    first = create_dataset(db, "surface-labels", EVERYTHING, "a")
    db.label_defect(DEVICE, 2, "relabelled", "a", "stain")
    db.label_defect(DEVICE, 5, "relabelled", "a", "scratch")  # unreviewed until now
    label_sample(db, DEVICE, 6, "scratch")
    second = create_dataset(db, "surface-labels", EVERYTHING, "a")
    assert second.ref == "surface-labels@2" and second.dataset_id != first.dataset_id
    diff = diff_manifests(first.manifest, second.manifest)
    assert [i.source for i in diff.added] == ["line1-gw1/5"] and not diff.removed
    assert [(old.source, old.label, new.label) for old, new in diff.relabelled] == [
        ("line1-gw1/2", "pit", "stain"), ("line1-gw1/6", "ok", "scratch")]
    change: dict[str, int] = {}
    for labels in diff.counts.values():
        for label, (old, new) in labels.items():
            change[label] = change.get(label, 0) + new - old
    assert {label: n for label, n in change.items() if n} == {
        "ok": -1, "pit": -1, "scratch": 2, "stain": 1}
    # Every image stays in its split from one version to the next.
    splits = {i.image_sha256: i.split for i in first.manifest.items}
    assert all(splits[i.image_sha256] == i.split for i in second.manifest.items
               if i.image_sha256 in splits)


def test_the_selection_takes_only_what_its_filters_say(db: CentralDB) -> None:
    labelled_line(db, "line1-gw1")
    store(db, "line2-gw1", {
        1: payload("scratch", sample_image("scratch_2"), camera="cam2", version="1.1.0",
                   pipeline="surface-2", seq=1)})
    db.label_defect("line2-gw1", 1, "confirmed", "a")

    def sources(**filters) -> list[str]:
        version = create_dataset(db, f"d{len(db.list_datasets())}", DatasetSelection(**filters),
                                 "a")
        assert version.manifest.selection == filters
        return [i.source for i in version.manifest.items]

    assert sources(device_id="line2-gw1") == ["line2-gw1/1"]
    assert sources(camera="cam2") == sources(pipeline="surface-2") == ["line2-gw1/1"]
    assert sources(model_name="surface-defects", model_version="1.1.0") == ["line2-gw1/1"]
    assert sources(origin="sample") == ["line1-gw1/6", "line1-gw1/7"]
    assert len(sources(origin="defect", device_id="line1-gw1")) == 4
    assert len(sources(labelled_since=0.0, labelled_until=4e9)) == 7
    with pytest.raises(EmptySelection, match=r"labelled_until=1\.0; label some on central's "
                                             r"/review pages"):
        create_dataset(db, "old", DatasetSelection(labelled_until=1.0), "a")


def test_detection_boxes_and_regions_are_scaled_to_the_stored_image(db: CentralDB) -> None:
    small = sample_image("scratch_0", (320, 240))  # a 640x480 frame kept at half size
    store(db, DEVICE, {
        1: payload("scratch", small, kind="detection", frame_size=(640, 480),
                   roi_box=(100, 250, 256, 256),
                   boxes=[("scratch", 148, 298, 180, 330), ("pit", 300, 300, 340, 340)]),
        2: payload("scratch", small, kind="detection", frame_size=(640, 480),
                   boxes=[("scratch", 10, 10, 50, 30)]),
        3: payload("pit", sample_image("pit_0", (320, 240)), kind="detection",
                   frame_size=(640, 480), boxes=[("pit", 0, 0, 640, 480)]),
        4: payload("pit", sample_image("pit_1"), kind="detection",  # an older agent: no size
                   boxes=[("pit", 8, 8, 24, 40)]),
    })
    db.label_defect(DEVICE, 1, "confirmed", "a")
    db.label_defect(DEVICE, 2, "relabelled", "a", "stain")
    db.label_defect(DEVICE, 3, "false_alarm", "a")
    db.label_defect(DEVICE, 4, "confirmed", "a")
    items = {i.source: i for i in create_dataset(db, "parts", EVERYTHING, "a").manifest.items}
    first = items["line1-gw1/1"]
    assert first.roi_box == (50, 125, 128, 115)  # at half size, cut at the image's bottom
    assert first.boxes == (("scratch", 74, 149, 90, 165),)  # the reviewed class only
    assert items["line1-gw1/2"].boxes == (("stain", 5, 5, 25, 15),)
    assert items["line1-gw1/3"].boxes == () and items["line1-gw1/3"].label == "ok"
    assert items["line1-gw1/4"].boxes == (("pit", 8, 8, 24, 40),)  # scale 1
    assert items["line1-gw1/1"].image_sha256 == items["line1-gw1/2"].image_sha256
    crop = load_crop(db, first)
    assert crop.shape == (115, 128, 3)
    assert db.find_dataset("parts@1").manifest.kind == "detection"


def test_images_outlive_the_records_they_were_frozen_from(db: CentralDB) -> None:
    labelled_line(db)
    version = create_dataset(db, "surface-labels", EVERYTHING, "a")
    for table in ("records", "defects", "samples"):
        db._db.execute(f"DELETE FROM {table}")
    kept = db.get_dataset("surface-labels", 1)
    assert kept is not None and kept.dataset_id == version.dataset_id
    for item in kept.manifest.items:
        assert load_crop(db, item).shape == (64, 64, 3)
    with pytest.raises(Exception, match="immutable"):
        db._db.execute("UPDATE datasets SET created_by = 'mallory'")


def test_refusals_say_what_to_do(db: CentralDB) -> None:
    with pytest.raises(EmptySelection, match=r"no labelled defects or samples match the "
                                             r"selection \(everything labelled\); label some"):
        create_dataset(db, "surface-labels", EVERYTHING, "a")
    labelled_line(db)
    with pytest.raises(DatasetTooLarge, match=r"6 labelled records match .*more than the 5 a "
                                              r"dataset may hold; narrow the selection"):
        create_dataset(db, "surface-labels", EVERYTHING, "a", max_items=5)
    with pytest.raises(DatasetError, match=r"dataset name '\.\./x' must be"):
        create_dataset(db, "../x", EVERYTHING, "a")
    store(db, DEVICE, {20: payload("pit", sample_image("pit_2"), kind="detection",
                                   pipeline="parts", boxes=[("pit", 1, 1, 9, 9)])})
    db.label_defect(DEVICE, 20, "confirmed", "a")
    with pytest.raises(DatasetError, match=r"mixes classification and detection records .*"
                                           r"choose with --pipeline"):
        create_dataset(db, "surface-labels", EVERYTHING, "a")
    assert create_dataset(db, "parts", DatasetSelection(pipeline="parts"), "a").version == 1
    assert db.list_datasets("surface-labels") == []


def test_a_label_that_is_no_class_name_is_refused(db: CentralDB) -> None:
    """What a gateway says (its model's class) or a reviewer typed becomes a folder name on
    export: a hostile "../../etc" never does."""
    store(db, DEVICE, {1: payload("../../etc", sample_image("scratch_0"))})
    db.label_defect(DEVICE, 1, "confirmed", "a")
    with pytest.raises(DatasetError, match=r"defect line1-gw1/1 is labelled '../../etc', "
                                           r"which is not a class name.*relabel it"):
        create_dataset(db, "surface-labels", EVERYTHING, "a")
    db.label_defect(DEVICE, 1, "relabelled", "a", "scratch")
    assert create_dataset(db, "surface-labels", EVERYTHING, "a").manifest.labels == (
        "scratch",)


def test_records_without_a_usable_image_are_left_out(db: CentralDB, caplog) -> None:
    hostile = payload("scratch", sample_image("scratch_0"), roi_box=(5000, 5000, 10, 10))
    broken = payload("pit", sample_image("pit_0"))
    broken["images"]["frame"]["jpeg_b64"] = "bm90IGEganBlZw=="  # "not a jpeg"
    store(db, DEVICE, {1: hostile, 2: broken, 3: payload("pit", sample_image("pit_1"))})
    for seq in (1, 2, 3):
        db.label_defect(DEVICE, seq, "confirmed", "a")
    version = create_dataset(db, "surface-labels", EVERYTHING, "a")
    assert [i.source for i in version.manifest.items] == ["line1-gw1/3"]
    assert "region lies outside its image" in caplog.text and "not a JPEG" in caplog.text


def test_splits_come_from_the_image_hash() -> None:
    assert split_of("00000000" + "f" * 56) == "test"  # 0 % 100
    assert split_of(f"{25:08x}" + "0" * 56) == "val"
    assert split_of(f"{99:08x}" + "0" * 56) == "train"
    shares = [split_of(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(5000)]
    assert 0.17 < shares.count("test") / 5000 < 0.23 and 0.08 < shares.count("val") / 5000 < 0.12


def test_manifest_text_gives_back_the_same_manifest_and_id(db: CentralDB) -> None:
    labelled_line(db)
    manifest = create_dataset(db, "surface-labels", EVERYTHING, "a").manifest
    again = DatasetManifest.from_text(manifest.canonical_json())
    assert again == manifest and again.dataset_id == manifest.dataset_id
    assert " " not in manifest.canonical_json().split('"split_rule"')[0]


@pytest.mark.parametrize("text", ["surface-labels", "surface-labels@", "@3", "x@1.0", "x@0",
                                  "../x@1"])
def test_a_dataset_ref_names_a_whole_version(text: str) -> None:
    with pytest.raises(ValueError, match="is not NAME@VERSION with a whole version number"):
        parse_dataset_ref(text)
    assert parse_dataset_ref("surface-labels@12") == ("surface-labels", 12)
