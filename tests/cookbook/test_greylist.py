"""Greylisting with SQLite and a real Redis: first attempts deferred, retries pass."""

from __future__ import annotations

import logging
import uuid

import pytest

from milterkit.client import MilterClient
from milterkit.contrib import greylist
from milterkit.contrib.greylist import Greylist, GreylistSettings, Timing
from milterkit.testing import assert_decision

from ._support import contrib_filter

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
TIMING = Timing(delay=300, retry_window=3600, pass_ttl=86400)


class Clock:
    """The time the filter sees; tests move it forward."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path) -> greylist.GreylistStore:
    if request.param == "sqlite":
        return greylist.SqliteStore(str(tmp_path / "greylist.db"))
    url = request.getfixturevalue("redis_url")
    return greylist.RedisStore(url, prefix=f"test-{uuid.uuid4().hex}:")


def attempt(milter_harness, settings: GreylistSettings, rcpt="<bob@example.com>", **kw):
    mta = milter_harness(lambda: Greylist(settings), client_address="192.0.2.10", **kw)
    return mta.check(MESSAGE, sender="<Alice@Example.org>", recipients=[rcpt])


def test_first_attempt_deferred_retry_after_delay_passes(milter_harness, store):
    clock = Clock()
    settings = GreylistSettings(store, TIMING, clock=clock)
    first = attempt(milter_harness, settings)
    assert_decision(first, "tempfail")
    assert str(first.smtp_reply) == "451 4.7.1 Greylisted, please try again in 300 seconds"
    clock.now += 100
    early = attempt(milter_harness, settings)
    assert str(early.smtp_reply) == "451 4.7.1 Greylisted, please try again in 200 seconds"
    clock.now += 200
    assert_decision(attempt(milter_harness, settings), "continue")
    clock.now += 80000  # passed triples keep passing...
    assert_decision(attempt(milter_harness, settings), "continue")
    clock.now += 80000  # ...for pass_ttl after their last use
    assert_decision(attempt(milter_harness, settings), "continue")


def test_triples_differ_by_network_sender_and_recipient(milter_harness, store):
    clock = Clock()
    settings = GreylistSettings(store, Timing(delay=0, retry_window=60), clock=clock)
    assert_decision(attempt(milter_harness, settings), "tempfail")
    assert_decision(attempt(milter_harness, settings), "continue")
    # same /24: same triple
    other_host = milter_harness(lambda: Greylist(settings), client_address="192.0.2.99")
    assert_decision(
        other_host.check(MESSAGE, sender="<alice@example.org>", recipients=["<bob@example.com>"]),
        "continue",
    )
    assert_decision(attempt(milter_harness, settings, "<carol@example.com>"), "tempfail")
    far = milter_harness(lambda: Greylist(settings), client_address="198.51.100.1")
    assert_decision(
        far.check(MESSAGE, sender="<alice@example.org>", recipients=["<bob@example.com>"]),
        "tempfail",
    )


def test_attempt_not_retried_within_the_window_starts_over(milter_harness, store):
    clock = Clock()
    settings = GreylistSettings(store, Timing(delay=10, retry_window=60), clock=clock)
    assert_decision(attempt(milter_harness, settings), "tempfail")
    clock.now += 61
    late = attempt(milter_harness, settings)
    assert str(late.smtp_reply) == "451 4.7.1 Greylisted, please try again in 10 seconds"


def test_allow_lists_and_authenticated_clients_skip(milter_harness, tmp_path):
    store = greylist.SqliteStore(str(tmp_path / "g.db"))
    settings = GreylistSettings(
        store,
        TIMING,
        allow_networks=(greylist.network_argument("192.0.2.0/28"),),
        allow_recipients=frozenset({"postmaster@example.com", "@vip.example"}),
    )
    assert_decision(attempt(milter_harness, settings), "continue")  # 192.0.2.10 allowed
    outside = GreylistSettings(store, TIMING, allow_recipients=settings.allow_recipients)
    assert_decision(attempt(milter_harness, outside, "<Postmaster@example.com>"), "continue")
    assert_decision(attempt(milter_harness, outside, "<ceo@vip.example>"), "continue")
    assert_decision(attempt(milter_harness, outside), "tempfail")
    authenticated = attempt(
        milter_harness, outside, "<dave@example.com>", macros={"{auth_authen}": "alice"}
    )
    assert_decision(authenticated, "continue")


@pytest.mark.parametrize(
    ("decision", "expected"), [("accept", "continue"), ("tempfail", "tempfail")]
)
def test_store_failure_logged_once_and_answered(
    milter_harness, tmp_path, caplog, decision, expected
):
    store = greylist.SqliteStore(str(tmp_path / "missing" / "g.db"))
    settings = GreylistSettings(store, TIMING, on_store_error=decision)
    mta = milter_harness(lambda: Greylist(settings), client_address="192.0.2.10")
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        result = mta.check(
            MESSAGE, sender="<a@example.org>", recipients=["<b@example.com>", "<c@example.com>"]
        )
    assert_decision(result, expected)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"[harness] greylist store sqlite {tmp_path}/missing/g.db failed: "
        "OperationalError: unable to open database file; answering"
    )


def test_redis_down_is_a_store_failure(milter_harness, caplog):
    store = greylist.RedisStore("redis://127.0.0.1:1/0", timeout=1)
    settings = GreylistSettings(store, TIMING, on_store_error="tempfail")
    with caplog.at_level(logging.ERROR, logger="milterkit"):
        result = attempt(milter_harness, settings)
    assert str(result.smtp_reply) == "451 4.3.0 greylisting unavailable, try again later"
    assert "greylist store redis 127.0.0.1:1 db 0 failed: ConnectionRefusedError" in caplog.text


# ---------------------------------------------------- two daemons, one store


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_daemons_share_the_store(kind, tmp_path, request):
    if kind == "sqlite":
        spec = f"sqlite:{tmp_path / 'shared.db'}"
    else:
        spec = request.getfixturevalue("redis_url")
    options = ("--store", spec, "--delay", "0")
    with contrib_filter("greylist", *options) as one, contrib_filter("greylist", *options) as two:
        first = check(one, "<alice@example.org>")
        retry = check(two, "<alice@example.org>")
        other = check(two, "<mallory@example.org>")
    assert (first.decision, str(first.smtp_reply)) == (
        "tempfail",
        "451 4.7.1 Greylisted, please try again in 1 second",
    )
    assert retry.decision == "continue"
    assert other.decision == "tempfail"


def check(milter, sender):
    with MilterClient(milter.address.milterkit, timeout=30) as client:
        return client.check(MESSAGE, sender=sender, recipients=["<bob@example.com>"])


# ------------------------------------------------------------- command line


def test_command_line_builds_the_settings(tmp_path):
    args = greylist.build_parser().parse_args(
        ["--socket", "inet:1@127.0.0.1", "--store", f"sqlite:{tmp_path}/g.db", "--delay", "5m",
         "--retry-window", "4h", "--pass-ttl", "30d", "--allow-network", "10.0.0.0/8",
         "--allow-recipient", "<Abuse@Example.com>", "--on-store-error", "tempfail"]
    )  # fmt: skip
    got = greylist.settings_from_args(args)
    assert got.timing == Timing(300, 4 * 3600, 30 * 86400)
    assert got.allow_recipients == {"abuse@example.com"}
    assert got.store.describe() == f"sqlite {tmp_path}/g.db"
    redis = greylist.open_store("redis+unix:///run/redis/redis.sock?db=2")
    assert redis.describe() == "redis /run/redis/redis.sock db 2"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--store", "mysql://x"], "unknown store 'mysql://x': use sqlite:/path"),
        (["--store", "sqlite:"], "sqlite store needs a path"),
        (["--store", "redis://:6379/x"], "bad Redis URL 'redis://:6379/x': no host"),
        (["--store", "redis://h/x"], "bad Redis URL 'redis://h/x': invalid literal"),
        (["--delay", "soon"], "'soon' is not a duration like 300, 5m, 4h or 36d"),
        (["--delay", "2h", "--retry-window", "1h"], "--retry-window must not be shorter"),
        (["--allow-network", "nowhere"], "'nowhere' is not an IP network"),
    ],
)
def test_command_line_errors_name_the_bad_value(argv, error, capsys):
    with pytest.raises(SystemExit):
        greylist.main(["--socket", "inet:1@127.0.0.1", *argv])
    assert error in capsys.readouterr().err


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("IPv6:2001:db8::1", "2001:db8::/64"),  # as Sendmail sends it
        ("::ffff:192.0.2.77", "192.0.2.0/24"),  # IPv4 seen by a dual-stack listener
        (None, "unknown"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_client_network_grouping(address, network):
    settings = GreylistSettings(greylist.SqliteStore(":memory:"))
    assert greylist.client_network(address, settings) == network
