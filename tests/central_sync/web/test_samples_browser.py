"""Sample review in real headless Chromium: label frames with the keyboard and watch the count
of samples awaiting review drop, on the queue and in the navigation of another page."""

from __future__ import annotations

import pytest
from browser_helpers import logged_in_page
from sample_helpers import sample_batch, vision_manifest

from central_sync.accounts import hash_password
from central_sync.db import CentralDB

PASSWORD = "correct horse battery"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the browser's side
def test_quality_engineer_labels_samples_with_the_keyboard_and_the_count_drops(
        db: CentralDB) -> None:
    db.add_model(vision_manifest(), published_by="dana")
    db.store_batch(sample_batch("gw-1", [(1, "scratch", 0.55), (2, "pit", 0.41),
                                         (3, "scratch", 0.48), (4, "stain", 0.6)]))
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    with logged_in_page(db, "anna", PASSWORD, "/review/samples") as (page, sync_api):
        expect = sync_api.expect
        grid, cards, count = page.locator("#grid"), page.locator(".card"), page.locator("#awaiting")
        expect(cards).to_have_count(4)
        expect(grid).to_have_attribute("data-ready", "true")  # the page's keys work now
        expect(count).to_have_text("4")
        expect(cards.nth(0)).to_be_focused()  # seq 2, the least confident
        expect(cards.nth(0).locator(".classes")).to_contain_text("1scratch 2pit 3stain 0ok")
        page.keyboard.press("3")  # a stain, not the pit the model said
        expect(cards.nth(0)).to_have_class("card labelled")
        expect(cards.nth(0).locator(".verdict")).to_have_text("stain")
        expect(count).to_have_text("3")
        expect(cards.nth(1)).to_be_focused()  # seq 3
        page.keyboard.press("o")  # nothing wrong with it
        expect(cards.nth(1).locator(".verdict")).to_have_text("ok")
        expect(count).to_have_text("2")
        expect(page.locator("#queue-awaiting")).to_have_text("2")
        expect(cards.nth(2)).to_be_focused()
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        expect(cards.nth(0)).to_be_focused()
        page.keyboard.press("0")  # changed its mind: seq 2 is ok after all; the count stays
        expect(cards.nth(0).locator(".verdict")).to_have_text("ok")
        expect(cards.nth(1)).to_be_focused()
        expect(count).to_have_text("2")
        page.goto(page.url.replace("/review/samples", "/fleet"))  # the fleet page asks for it
        expect(page.locator("#awaiting")).to_have_text("2")
    assert {seq: db.get_sample("gw-1", seq).true_label  # type: ignore[union-attr]
            for seq in (1, 2, 3, 4)} == {1: None, 2: "ok", 3: "ok", 4: None}
    assert db.samples_awaiting() == 2
