"""Lineage pages: from a defect or sample record to the model version that made it (and
whether its sha256 is the one central published), that version's dataset, evaluation and
approver; and a dataset version's counts per class and split. Anyone logged in may read them."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse

from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.dataset_manifest import SPLITS
from central_sync.web.auth import session_dependencies
from central_sync.web.params import RecordSeq, VersionNumber
from central_sync.web.rendering import templates


def lineage_router(db: CentralDB) -> APIRouter:
    """/review/records/DEVICE/SEQ and /datasets/NAME/N."""
    router = APIRouter()
    _, viewer, _ = session_dependencies(db)
    page = Annotated[Session, Depends(viewer)]

    @router.get("/review/records/{device_id}/{seq}", response_class=HTMLResponse)
    def record(device_id: str, seq: RecordSeq, session: page) -> str:
        return templates.get_template("record.html").render(
            session=session, **record_lineage(db, device_id, seq))

    @router.get("/datasets/{name}/{version}", response_class=HTMLResponse)
    def dataset(name: str, version: VersionNumber, session: page) -> str:
        found = db.get_dataset(name, version)
        if found is None:
            raise HTTPException(404, f"no dataset version {name}@{version}; `central-sync "
                                "dataset list` shows them")
        counts = found.manifest.counts
        labels = found.manifest.labels
        trained = [m for m in db.list_models()
                   if (m.manifest.meta.lineage and m.manifest.meta.lineage.dataset == found.ref)]
        return templates.get_template("dataset.html").render(
            session=session, dataset=found, labels=labels, splits=SPLITS,
            counts={label: {split: counts.get(split, {}).get(label, 0) for split in SPLITS}
                    for label in labels},
            totals={split: sum(counts.get(split, {}).values()) for split in SPLITS},
            trained=trained)

    return router


def record_lineage(db: CentralDB, device_id: str, seq: int) -> dict[str, Any]:
    """What the record page shows: the defect or sample with its review, the model it names,
    and that version's lineage as central has it."""
    defect = db.get_defect(device_id, seq)
    sample = db.get_sample(device_id, seq) if defect is None else None
    found = defect or sample
    stored = db.record_model(device_id, seq)
    if found is None:
        raise HTTPException(404, f"no defect or sample {device_id}/{seq}")
    name = (stored or {}).get("model_name") or found.model_name
    version = (stored or {}).get("model_version") or found.model_version
    manifest = db.get_model(name, version)
    state = db.model_state(name, version) if manifest else None
    lineage = manifest.meta.lineage if manifest else None
    evaluation_id = state.evaluation_id if state else None
    return {
        "kind": "defect" if defect else "sample", "record": found,
        "suspect": db.suspect_record(device_id, seq),
        "model_name": name, "version": version,
        "record_sha256": (stored or {}).get("model_sha256"), "manifest": manifest,
        "state": state, "dataset": lineage.dataset if lineage else "",
        "dataset_path": "/datasets/" + "/".join(lineage.dataset.rsplit("@", 1))
        if lineage and lineage.dataset else "",
        "dataset_id": lineage.dataset_id if lineage else "",
        "evaluation": db.get_evaluation(evaluation_id) if evaluation_id else None,
        "published_by": next((m.published_by for m in db.list_models()
                              if m.manifest.name == name and m.manifest.version == version),
                             None)}
