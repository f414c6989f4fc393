"""Central's login backs off per account and per client address (state in the database, so
every central process sees it), and checks a bounded number of passwords at once."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from central_sync import accounts
from central_sync.accounts import (
    ACCOUNT_BACKOFF,
    ADDRESS_BACKOFF,
    LoginThrottled,
    hash_password,
    log_in,
)
from central_sync.db import CentralDB
from central_sync.web import create_app

PASSWORD = "correct horse battery"


@pytest.fixture
def site(db: CentralDB) -> TestClient:
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    return TestClient(create_app(db, offline_after_s=120), follow_redirects=False)


def attempt(client: TestClient, user: str, password: str) -> httpx.Response:
    return client.post("/login", data={"username": user, "password": password})


def logged_in(reply: httpx.Response) -> bool:
    return reply.status_code == 303 and "central_session=" in reply.headers.get("set-cookie", "")


def test_wrong_passwords_lock_the_account_and_even_the_right_password_is_refused(
        site: TestClient) -> None:
    for _ in range(ACCOUNT_BACKOFF.free_failures):
        reply = attempt(site, "anna", "wrong password!")
        assert reply.headers["location"].startswith("/login?")
    refused = attempt(site, "anna", PASSWORD)
    assert refused.status_code == 429 and not logged_in(refused)
    wait_s = int(refused.headers["retry-after"])
    assert 1 <= wait_s <= ACCOUNT_BACKOFF.first_lockout_s + 1
    assert f"too many attempts, try again in {wait_s} s" in refused.text
    # The account, not just this client: another address is refused too.
    elsewhere = TestClient(site.app, client=("10.0.0.9", 40000), follow_redirects=False)
    assert attempt(elsewhere, "anna", PASSWORD).status_code == 429


def test_the_lockout_doubles_with_each_failure_and_ends_after_its_time(db: CentralDB) -> None:
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    now = time.time()
    for _ in range(ACCOUNT_BACKOFF.free_failures):
        assert log_in(db, "anna", "wrong password!", "10.0.0.1", now=now) is None
    with pytest.raises(LoginThrottled) as first:
        log_in(db, "anna", PASSWORD, "10.0.0.1", now=now)
    assert first.value.retry_after_s == pytest.approx(ACCOUNT_BACKOFF.first_lockout_s)
    later = now + first.value.retry_after_s + 0.1  # the lockout is over: one more wrong one
    assert log_in(db, "anna", "wrong password!", "10.0.0.1", now=later) is None
    with pytest.raises(LoginThrottled) as second:
        log_in(db, "anna", PASSWORD, "10.0.0.1", now=later)
    assert second.value.retry_after_s == pytest.approx(2 * ACCOUNT_BACKOFF.first_lockout_s)
    assert ACCOUNT_BACKOFF.lockout_s(1000) == ACCOUNT_BACKOFF.max_lockout_s
    after = later + second.value.retry_after_s + 0.1
    assert log_in(db, "anna", PASSWORD, "10.0.0.1", now=after) is not None
    # A success forgets the account's failures: the next wrong one is free again.
    assert log_in(db, "anna", "wrong password!", "10.0.0.1", now=after) is None
    assert log_in(db, "anna", PASSWORD, "10.0.0.1", now=after) is not None


def test_many_wrong_logins_from_one_address_lock_that_address_for_every_account(
        site: TestClient, db: CentralDB) -> None:
    db.add_user("ben", hash_password(PASSWORD), "viewer", by="admin")
    for i in range(ADDRESS_BACKOFF.free_failures):  # a different name each time
        assert attempt(site, f"guess-{i}", "wrong password!").status_code == 303
    refused = attempt(site, "ben", PASSWORD)
    assert refused.status_code == 429 and "too many attempts" in refused.text
    elsewhere = TestClient(site.app, client=("10.0.0.9", 40000), follow_redirects=False)
    assert logged_in(attempt(elsewhere, "ben", PASSWORD))


def test_password_checks_beyond_the_bound_are_refused_at_once_not_queued(
        db: CentralDB, monkeypatch: pytest.MonkeyPatch) -> None:
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    entered, release = threading.Event(), threading.Event()
    checked_off_loop: list[bool] = []
    real_check = accounts.password_matches

    def held_check(password_hash: str, password: str) -> bool:
        try:
            asyncio.get_running_loop()
            checked_off_loop.append(False)
        except RuntimeError:
            checked_off_loop.append(True)
        entered.set()
        release.wait(10)
        return real_check(password_hash, password)

    monkeypatch.setattr(accounts, "password_matches", held_check)
    app = create_app(db, offline_after_s=120, password_checks_at_once=1)
    first = TestClient(app, client=("10.0.0.1", 40000), follow_redirects=False)
    second = TestClient(app, client=("10.0.0.2", 40000), follow_redirects=False)
    replies: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: replies.append(attempt(first, "anna", PASSWORD)))
    holder.start()
    assert entered.wait(10), "the first login never reached its password check"
    started = time.monotonic()
    busy = attempt(second, "anna", PASSWORD)
    assert busy.status_code == 503 and time.monotonic() - started < 5
    assert busy.headers["retry-after"] == "1"
    assert "busy checking other logins" in busy.text
    release.set()
    holder.join(10)
    assert logged_in(replies[0])
    assert checked_off_loop == [True]  # Argon2 runs in a worker thread, not on the loop
