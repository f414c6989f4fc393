"""The sample review pages and API in the app: the queue in its order with each model's classes,
labels with the CSRF header, the awaiting count in the navigation, and what is refused."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sample_helpers import sample_batch, vision_manifest

from central_sync.accounts import hash_password
from central_sync.db import CentralDB
from central_sync.web import create_app

PASSWORD = "correct horse battery"
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the web side


@pytest.fixture
def web(db: CentralDB) -> TestClient:
    """Central with 50 samples awaiting review: pits, then scratches, less and less sure."""
    db.add_model(vision_manifest(), published_by="dana")
    db.store_batch(sample_batch("gw-1", [
        (seq, "pit" if seq <= 10 else "scratch", round(0.6 - seq / 1000, 3))
        for seq in range(1, 51)]))
    for name, role in (("anna", "quality"), ("vic", "viewer")):
        db.add_user(name, hash_password(PASSWORD), role, by="admin")
    return TestClient(create_app(db, offline_after_s=120))


def logged_in(client: TestClient, user: str) -> str:
    """Log in through the form onto the queue; returns the page's CSRF token ("" for viewers)."""
    reply = client.post("/login", data={"username": user, "password": PASSWORD,
                                        "next": "/review/samples"})
    assert reply.status_code == 200 and "Sample review" in reply.text
    return reply.text.split('id="grid" class="grid" data-csrf="')[1].split('"')[0]


def card_seqs(html: str) -> list[int]:
    return [int(seq) for seq in re.findall(r'data-url="/api/samples/gw-1/(\d+)/label"', html)]


def test_queue_shows_the_least_confident_first_with_each_models_classes(
        web: TestClient) -> None:
    logged_in(web, "anna")
    page = web.get("/review/samples").text
    assert card_seqs(page) == list(range(50, 2, -1))  # 48 a page, the least sure first
    assert 'data-classes="[&#34;scratch&#34;, &#34;pit&#34;, &#34;stain&#34;]"' in page
    assert '<strong id="queue-awaiting">50</strong>' in page
    assert '<span id="awaiting" class="count" title="samples awaiting review">50</span>' in page
    following = re.search(r'<a id="next" href="([^"]+)"', page)
    assert following is not None
    rest = web.get(following.group(1).replace("&amp;", "&")).text
    assert card_seqs(rest) == [2, 1]
    pits = web.get("/review/samples?label=pit&state=unlabelled").text
    assert card_seqs(pits) == list(range(10, 0, -1))


def test_a_quality_user_labels_with_the_csrf_header_and_the_count_drops(
        web: TestClient, db: CentralDB) -> None:
    csrf = logged_in(web, "anna")
    reply = web.post("/api/samples/gw-1/50/label", json={"true_label": "stain"},
                     headers={"X-CSRF-Token": csrf})
    assert reply.status_code == 200
    assert (reply.json()["true_label"], reply.json()["labelled_by"],
            reply.json()["awaiting"]) == ("stain", "anna", 49)
    assert web.post("/api/samples/gw-1/49/label", json={"true_label": "ok"},
                    headers={"X-CSRF-Token": csrf}).json()["awaiting"] == 48
    assert web.get("/api/samples/awaiting").json() == {"awaiting": 48}
    assert card_seqs(web.get("/review/samples").text)[:2] == [48, 47]  # the labelled: last
    review = web.get("/review").text
    assert '<a href="/review/samples">48 samples await review</a>' in review
    assert '<span id="awaiting" class="count" title="samples awaiting review">48</span>' in review
    assert [(e["actor"], e["subject"]) for e in db.list_audit()
            if e["action"] == "sample.label"] == [("anna", "gw-1/49"), ("anna", "gw-1/50")]


def test_the_navigation_counts_awaiting_samples_for_quality_users_on_every_page(
        web: TestClient) -> None:
    logged_in(web, "anna")
    fleet = web.get("/fleet").text  # a page that does not know the count: nav.js asks
    assert '<span id="awaiting" class="count" title="samples awaiting review"></span>' in fleet
    assert '<script src="/static/nav.js"></script>' in fleet
    assert "/api/samples/awaiting" in web.get("/static/nav.js").text
    viewer = TestClient(web.app)
    logged_in(viewer, "vic")
    for path in ("/", "/review", "/review/samples"):
        page = viewer.get(path).text
        assert 'href="/review/samples"' in page and 'id="awaiting"' not in page
        assert "nav.js" not in page


def test_labels_are_refused_to_viewers_to_other_sites_and_outside_the_models_classes(
        web: TestClient, db: CentralDB) -> None:
    url = "/api/samples/gw-1/50/label"
    stranger = TestClient(web.app)
    assert stranger.post(url, json={"true_label": "ok"}).status_code == 401
    assert stranger.get("/api/samples/awaiting").status_code == 401
    assert stranger.get("/review/samples", follow_redirects=False).status_code == 303
    viewer = TestClient(web.app)
    assert logged_in(viewer, "vic") == ""  # the page gives a viewer nothing to label with
    refused = viewer.post(url, json={"true_label": "ok"}, headers={"X-CSRF-Token": "x"})
    assert refused.status_code == 403 and "needs the quality role" in refused.text
    csrf = logged_in(web, "anna")
    # Another site's page can make the browser post with the cookie, but not with the token.
    cross_site = web.post(url, json={"true_label": "ok"},
                          headers={"Origin": "https://evil.example"})
    assert cross_site.status_code == 403 and "X-CSRF-Token" in cross_site.text
    assert web.post(url, json={"true_label": "ok"},
                    headers={"X-CSRF-Token": csrf + "x"}).status_code == 403
    token = {"X-CSRF-Token": csrf}
    foreign = web.post(url, json={"true_label": "dent"}, headers=token)
    assert foreign.status_code == 422
    assert foreign.json()["detail"] == ("'dent' is not a class of model surface-defects 1.0.0; "
                                        "choose one of scratch, pit, stain, ok")
    for body in ({"true_label": "x" * 129}, {"true_label": ""}, {"true_label": "ok", "by": "z"},
                 {"verdict": "confirmed"}):
        assert web.post(url, json=body, headers=token).status_code == 422, body
    assert web.post("/api/samples/gw-1/999/label", json={"true_label": "ok"},
                    headers=token).status_code == 404
    for bad in ("/api/samples/gw-1/99999999999999999999/label",
                "/api/samples/..%2Fetc/1/label", "/api/samples/gw-1/-1/label"):
        assert web.post(bad, json={"true_label": "ok"}, headers=token).status_code in (404, 422)
    for query in ("label=" + "x" * 129, "reason=bored", "state=maybe", "after=garbage",
                  "after=" + "1" * 300):
        assert web.get(f"/review/samples?{query}").status_code == 422, query
    assert db.samples_awaiting() == 50  # nothing refused was stored
