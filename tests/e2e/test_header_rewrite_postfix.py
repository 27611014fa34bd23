"""Milter.rewrite_headers through a real Postfix: delivered headers are exactly the wanted
ones (below Postfix's own Received:), and apply() predicted the same bytes."""

from __future__ import annotations

import email.parser

import pytest

from milterkit.testing import MilterHarness

from .blocking_milters import HeaderRewriter, wanted_headers
from .conftest import postfix_instance
from .harness import MilterAddress, MilterProcess

TARGET = "tests.e2e.blocking_milters:HeaderRewriter"
HEADERS = [
    ("From", "alice@example.org"),
    ("X-Old-1", "a"),
    ("To", "bob@example.com"),
    ("X-Old-2", "b"),
    ("Subject", "hello"),
    ("X-Old-1", "c"),
    ("Message-Id", "<rewrite-1@example.org>"),
    ("Date", "Thu, 03 Dec 2026 05:00:00 +0000"),
]
MESSAGE = ("".join(f"{n}: {v}\r\n" for n, v in HEADERS) + "\r\nbody\r\n").encode()


def _headers(raw: bytes) -> list[tuple[str, str]]:
    parsed = email.parser.BytesHeaderParser().parsebytes(raw)
    return [(name, str(value)) for name, value in parsed.items()]


@pytest.mark.realmta
def test_rewrite_headers_delivers_exactly_the_wanted_headers() -> None:
    address = MilterAddress.new("inet")
    with (
        MilterProcess(TARGET, address) as milter,
        postfix_instance(milter.address.postfix) as postfix,
    ):
        postfix.send("alice@example.org", ["bob@example.com"], MESSAGE)
        (delivered,) = postfix.wait_delivered("bob", 1, timeout=60)
    got = _headers(delivered)
    start = next(i for i, (name, _) in enumerate(got) if name == "X-Top")
    received = [i for i, (name, _) in enumerate(got) if name == "Received"]
    # INSHEADER 1 (the first visible position) lands right below Postfix's Received
    assert received and received[-1] == start - 1
    visible = [h for h in got[start:] if h[0] != "Received"]
    assert visible == wanted_headers(HEADERS)
    with MilterHarness(HeaderRewriter) as mta:
        result = mta.check(MESSAGE, sender="<alice@example.org>", recipients=["<b@example.com>"])
    predicted = _headers(result.apply(MESSAGE, received_header="Received: by mx").message_bytes)
    assert [h for h in predicted if h[0] != "Received"] == visible
