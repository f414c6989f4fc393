"""Defect review in real headless Chromium: log in, label with the keyboard, filter, page."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import pytest
from browser_helpers import logged_in_page
from review_helpers import defect_batch

from central_sync.accounts import hash_password
from central_sync.db import CentralDB
from tests.helpers import wait_until

PASSWORD = "correct horse battery"


@pytest.mark.slow
# The page's keys in a browser; labelling, filters and export run on both databases in
# test_review.py.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_quality_engineer_labels_defects_with_the_keyboard_in_chromium(
        db: CentralDB, tmp_path: Path) -> None:
    db.store_batch(defect_batch("gw-1", range(1, 61)))
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    shots = tmp_path / "screenshots"
    with logged_in_page(db, "anna", PASSWORD, "/review", (1920, 1080)) as (page, sync_api):
        expect = sync_api.expect
        grid, cards = page.locator("#grid"), page.locator(".card")
        expect(page.get_by_text("60 defects match")).to_be_visible()
        expect(cards).to_have_count(48)
        expect(grid).to_have_attribute("data-ready", "true")  # the page's keys work now
        expect(cards.nth(0)).to_be_focused()
        page.keyboard.press("c")  # the newest (seq 60): confirmed, focus moves on
        expect(cards.nth(0)).to_have_class("card confirmed")
        expect(cards.nth(1)).to_be_focused()
        page.keyboard.press("f")  # seq 59: false alarm
        expect(cards.nth(1)).to_have_class("card false_alarm")
        expect(cards.nth(2)).to_be_focused()
        page.keyboard.press("r")
        expect(cards.nth(2).locator(".verdict")).to_contain_text("relabel as: 1 ")
        page.keyboard.press("1")  # seq 58 relabelled as the first class in the menu
        expect(cards.nth(2)).to_have_class("card relabelled")
        expect(cards.nth(3)).to_be_focused()
        page.keyboard.press("ArrowLeft")
        expect(cards.nth(2)).to_be_focused()
        page.keyboard.press("c")  # changed its mind: seq 58 confirmed after all
        expect(cards.nth(2)).to_have_class("card confirmed")
        expect(cards.nth(3)).to_be_focused()
        shots.mkdir()
        page.screenshot(path=str(shots / "review.png"))
        shutil.copy(shots / "review.png", "/tmp/central_review.png")
        with page.expect_download() as download:
            page.click("text=Export labelled (zip)")
        archive = zipfile.ZipFile(download.value.path())
        assert sorted(archive.namelist()) == [
            "images/gw-1-58.jpg", "images/gw-1-59.jpg", "images/gw-1-60.jpg",
            "manifest.csv", "manifest.json"]
        page.select_option("select[name=verdict]", "unreviewed")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(re.compile(r"/review\?.*verdict=unreviewed"))
        expect(page.get_by_text("57 defects match")).to_be_visible()
        expect(cards).to_have_count(48)
        expect(grid).to_have_attribute("data-ready", "true")  # the filtered page's keys work
        page.keyboard.press("n")  # the next page: the 9 oldest unreviewed
        page.wait_for_url(re.compile(r"/review\?.*after="))
        expect(cards).to_have_count(9)
        expect(grid).to_have_attribute("data-ready", "true")
        expect(cards.nth(0)).to_be_focused()
    verdicts = {seq: db.get_defect("gw-1", seq).verdict for seq in (60, 59, 58, 57)}  # type: ignore[union-attr]
    assert verdicts == {60: "confirmed", 59: "false_alarm", 58: "confirmed", 57: None}
    wait_until(lambda: len([e for e in db.list_audit() if e["action"] == "defect.label"]) == 4,
               what="four labels in the audit log")
