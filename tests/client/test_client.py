"""The client against a scripted milter over real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from milterkit import Milter
from milterkit.client import (
    SENDMAIL,
    V2_ONLY,
    AsyncMilterClient,
    CheckResult,
    ClientInfo,
    ClientOptions,
    MilterAddressError,
    MilterClient,
    MilterConnectionError,
    MilterProtocolError,
    MilterTimeout,
    check,
)
from milterkit.protocol import (
    Accept,
    AddHeader,
    Body,
    ChangeHeader,
    Command,
    Connect,
    Continue,
    Data,
    Family,
    Header,
    Helo,
    InsertHeader,
    Macro,
    MacroStage,
    Mail,
    Message,
    Progress,
    ProtocolFlag,
    Quarantine,
    Quit,
    Rcpt,
    Reject,
    RemoteProtocolError,
    ReplyCode,
    Skip,
    replace_body_chunks,
)
from tests.client.conftest import Serve
from tests.client.milter_server import CLOSE, GARBAGE, SILENT, Script

MSG = (
    b"From: <alice@example.org>\r\n"
    b"To: <bob@example.com>\r\n"
    b"Subject:  spaced\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
)


def kinds(packets: list[Message]) -> str:
    """Command letters, MACRO packets as lower-case stage letters: 'OcC hH ...'."""
    out = []
    for p in packets:
        if isinstance(p, Macro):
            out.append(chr(p.stage).lower() if p.stage else "?")
        else:
            out.append(chr(p.code))
    return "".join(out)


@pytest.mark.parametrize("family", ["unix", "inet", "inet6"])
def test_check_adds_header_over_each_family(serve: Serve, family: str) -> None:
    eom = [AddHeader(b"X-Test", b"yes"), Continue()]
    address, server = serve(Script(replies={Command.BODYEOB: eom}), family)
    result = check(address, MSG, sender="alice@example.org", recipients=["bob@example.com"])
    assert result.decision == "continue"
    assert result.modifications == [AddHeader(b"X-Test", b"yes")]
    assert [s.stage for s in result.stages] == [
        "connect", "helo", "mail", "rcpt", "data",
        "header", "header", "header", "header", "eoh", "body", "eom",
    ]  # fmt: skip
    assert result.apply(MSG).message_bytes == MSG.replace(b"\r\n\r\n", b"\r\nX-Test: yes\r\n\r\n")
    # Postfix's packet sequence: D before every command incl. headers and body
    assert kinds(server.logs[0].packets()) == "OcChHmMrRtTlLlLlLlLnNbBeEAAQ"


def test_envelope_defaults_from_headers(serve: Serve) -> None:
    address, server = serve()
    result = check(address, MSG)
    assert result.sender == "alice@example.org"
    assert result.recipients == ["bob@example.com"]
    mail = next(e for e in server.logs[0].events if isinstance(e, Mail))
    assert mail.sender == b"<alice@example.org>"


def test_header_values_strip_one_space_unless_leadspc(serve: Serve) -> None:
    address, server = serve()
    check(address, MSG)
    address2, server2 = serve(Script(protocol=ProtocolFlag.HDR_LEADSPC))
    check(address2, MSG)
    plain = [e for e in server.logs[0].events if isinstance(e, Header)]
    lead = [e for e in server2.logs[0].events if isinstance(e, Header)]
    assert plain[2] == Header(b"Subject", b" spaced")
    assert lead[2] == Header(b"Subject", b"  spaced")


def test_reject_one_recipient_message_goes_on(serve: Serve) -> None:
    def rcpt(cmd: Message, _conn: object) -> Message:
        assert isinstance(cmd, Rcpt)
        if cmd.recipient.startswith(b"<reject@"):
            return ReplyCode(b"550 5.7.1 not you")
        return Continue()

    address, _ = serve(Script(replies={Command.RCPT: rcpt}))
    result = check(address, MSG, recipients=["reject@example.com", "keep@example.com"])
    assert result.decision == "continue"
    assert str(result.rejected_recipients["reject@example.com"]) == "550 5.7.1 not you"
    assert result.apply(MSG).recipients == ("keep@example.com",)


def test_all_recipients_rejected_ends_before_data(serve: Serve) -> None:
    address, server = serve(Script(replies={Command.RCPT: [Reject()]}))
    result = check(address, MSG)
    assert (result.decision, result.decided_at) == ("reject", "rcpt")
    assert str(result.smtp_reply) == "550 5.7.1 Command rejected"
    assert not any(isinstance(e, Data) for e in server.logs[0].events)


def test_reject_at_mail_stops_the_message(serve: Serve) -> None:
    address, server = serve(Script(replies={Command.MAIL: [ReplyCode(b"554 5.7.1 go away")]}))
    result = check(address, MSG)
    assert (result.decision, result.decided_at) == ("reject", "mail")
    assert result.reply is not None and result.reply.code == 554
    assert kinds(server.logs[0].packets()).endswith("mMAAQ")


def test_accept_at_rcpt_skips_rest(serve: Serve) -> None:
    address, server = serve(Script(replies={Command.RCPT: [Accept()]}))
    result = check(address, MSG)
    assert (result.decision, result.decided_at) == ("accept", "rcpt")
    assert result.delivered
    assert not any(isinstance(e, Data) for e in server.logs[0].events)


def test_reject_at_connect_applies_to_every_message(serve: Serve) -> None:
    address, server = serve(Script(replies={Command.CONNECT: [ReplyCode(b"554 5.7.1 no")]}))
    with MilterClient(address) as client:
        first = client.check(MSG)
        second = client.check(MSG)
    for result in (first, second):
        assert (result.decision, result.decided_at) == ("reject", "connect")
        assert str(result.smtp_reply) == "554 5.7.1 no"
    assert kinds(server.logs[0].packets()) == "OcC"  # Postfix closes without QUIT


def test_replace_body_over_64k(serve: Serve) -> None:
    new_body = b"".join(b"line %05d abcdefghijklmnopqrstuvwxyz\r\n" % i for i in range(3000))
    assert len(new_body) > 65536
    eom = [*replace_body_chunks(new_body), Continue()]
    address, _ = serve(Script(replies={Command.BODYEOB: eom}))
    result = check(address, MSG)
    assert len(result.modifications) == 2
    assert result.apply(MSG).message_bytes == MSG.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + new_body


def test_large_body_is_chunked(serve: Serve) -> None:
    body = b"x" * 76 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + body * 2000
    address, server = serve()
    check(address, message, sender="a@b.c", recipients=["d@e.f"])
    chunks = [e.chunk for e in server.logs[0].events if isinstance(e, Body)]
    assert [len(c) for c in chunks] == [65535, 65535, 156000 - 2 * 65535]
    assert b"".join(chunks) == body * 2000


def test_skip_in_body_stops_chunks(serve: Serve) -> None:
    message = b"Subject: big\r\n\r\n" + b"y" * 200000
    address, server = serve(Script(replies={Command.BODY: [Skip()]}))
    result = check(address, message, sender="a@b.c", recipients=["d@e.f"])
    assert result.skipped_body and result.decision == "continue"
    assert sum(isinstance(e, Body) for e in server.logs[0].events) == 1


def test_quarantine_and_progress_at_eom(serve: Serve) -> None:
    eom = [Progress(), Quarantine(b"suspicious"), Progress(), Continue()]
    address, _ = serve(Script(replies={Command.BODYEOB: eom}))
    result = check(address, MSG)
    assert result.quarantine_reason == "suspicious"
    assert result.held and result.decision == "continue"


def test_several_messages_on_one_connection(serve: Serve) -> None:
    counter = iter(range(100))

    def eom(_cmd: Message, _conn: object) -> list[Message]:
        return [InsertHeader(0, b"X-N", str(next(counter)).encode()), Continue()]

    address, server = serve(Script(replies={Command.BODYEOB: eom}))
    with MilterClient(address) as client:
        results = [client.check(MSG) for _ in range(3)]
    assert [r.modifications[0].value for r in results] == [b"0", b"1", b"2"]  # type: ignore[attr-defined]
    assert len(server.logs) == 1
    seq = kinds(server.logs[0].packets())
    assert seq.count("M") == 3 and seq.endswith("EAAQ")
    assert seq.count("A") == 4  # one after each message (Postfix) + one at QUIT


def test_sendmail_profile_shapes(serve: Serve) -> None:
    address, server = serve()
    with MilterClient(address, profile=SENDMAIL, client_address="2001:db8::1") as client:
        client.check(MSG)
        client.check(MSG)
    packets = server.logs[0].packets()
    connect = next(p for p in packets if isinstance(p, Connect))
    assert connect.address == b"IPv6:2001:db8::1"
    assert connect.family == ord("6")
    # no D before DATA, headers, EOH or body; no ABORT between messages or before QUIT
    assert kinds(packets) == "OcChHmMrRTLLLLNBeE" + "mMrRTLLLLNBeE" + "Q"
    eom_macros = [p for p in packets if isinstance(p, Macro) and p.stage == ord("E")]
    assert eom_macros[0].pairs == ((b"{msg_id}", b"<m1@example.org>"),)


def test_v2_profile_sends_no_data(serve: Serve) -> None:
    address, server = serve(Script(version=2, protocol=ProtocolFlag.NONE))
    result = check(address, MSG, profile=V2_ONLY)
    assert result.negotiated is not None and result.negotiated.version == 2
    assert server.logs[0].events[0].protocol == ProtocolFlag(0x7F)  # type: ignore[attr-defined]
    assert "T" not in kinds(server.logs[0].packets())


def test_requested_macros_and_overrides(serve: Serve) -> None:
    script = Script(macros={MacroStage.ENVFROM: "{auth_authen} {client_addr} {nothing}"})
    address, server = serve(script)
    check(address, MSG, macros={"{auth_authen}": "alice", "j": "mx.test", "{custom}": "c"})
    packets = server.logs[0].packets()
    by_stage = {chr(p.stage): dict(p.pairs) for p in packets if isinstance(p, Macro) and p.stage}
    assert by_stage["M"] == {b"{auth_authen}": b"alice", b"{client_addr}": b"127.0.0.1"}
    assert by_stage["C"][b"j"] == b"mx.test"
    assert by_stage["C"][b"{custom}"] == b"c"
    assert by_stage["C"][b"_"] == b"unknown [127.0.0.1]"


def test_no_reply_flags_are_honoured(serve: Serve) -> None:
    address, _ = serve(Script(protocol=ProtocolFlag.NR_HDR | ProtocolFlag.NOBODY))
    result = check(address, MSG)
    decisions = [(s.stage, s.decision) for s in result.stages]
    assert ("header", "noreply") in decisions
    assert not any(stage == "body" for stage, _ in decisions)


def test_abort_reaches_filter(serve: Serve) -> None:
    address, server = serve(Script(replies={Command.BODYEOB: [Continue()]}))
    with MilterClient(address, profile=SENDMAIL) as client:
        client.check(MSG)
        client.abort()
        client.check(MSG)
    assert kinds(server.logs[0].packets()).count("A") == 1


def test_never_answers_times_out(serve: Serve) -> None:
    address, _ = serve(Script(replies={Command.MAIL: SILENT}))
    started = time.monotonic()
    with pytest.raises(MilterTimeout) as info:
        check(address, MSG, timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert info.value.stage == "mail"
    assert address in str(info.value) and "MAIL" in str(info.value)


def test_garbage_is_a_protocol_error(serve: Serve) -> None:
    address, _ = serve(Script(replies={Command.RCPT: GARBAGE}))
    with pytest.raises(MilterProtocolError) as info:
        check(address, MSG, timeout=2)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.stage == "rcpt"
    assert address in str(info.value)


def test_close_mid_message(serve: Serve) -> None:
    address, _ = serve(Script(replies={Command.HEADER: CLOSE}))
    with pytest.raises(MilterConnectionError) as info:
        check(address, MSG, timeout=2)
    assert info.value.stage == "header"
    assert "closed the connection" in str(info.value)


def test_client_unusable_after_error(serve: Serve) -> None:
    address, _ = serve(Script(replies={Command.EOH: CLOSE}))
    with MilterClient(address, timeout=2) as client:
        with pytest.raises(MilterConnectionError):
            client.check(MSG)
        with pytest.raises(MilterConnectionError, match="create a new client"):
            client.check(MSG)


def test_connection_refused_and_bad_address(tmp_path: object) -> None:
    with pytest.raises(MilterConnectionError) as info:
        check(f"unix:{tmp_path}/nothing.sock", MSG, timeout=1)
    assert info.value.stage == "connect"
    with pytest.raises(MilterAddressError):
        check("bogus:thing", MSG)


def test_async_client(serve: Serve) -> None:
    address, server = serve(
        Script(replies={Command.BODYEOB: [ChangeHeader(1, b"To", b""), Continue()]})
    )

    async def main() -> list[str]:
        async with AsyncMilterClient(address, timeout=2) as client:
            first = await client.check(MSG)
            second = await client.check(MSG, sender="x@y.z", recipients=["a@b.c"])
        return [first.decision, second.decision]

    assert asyncio.run(main()) == ["continue", "continue"]
    assert kinds(server.logs[0].packets()).count("A") == 3  # ABORT is absorbed by the filter
    assert isinstance(server.logs[0].events[-1], Quit)  # read once packets() saw the close


def test_sync_client_runs_inside_a_running_event_loop(serve: Serve) -> None:
    """The blocking client owns no loop: a sync function called from a coroutine may use it.

    A client that ran a private loop per call fails here ("Cannot run the
    event loop while another loop is running").
    """
    address, _ = serve(Script(replies={Command.BODYEOB: [AddHeader(b"X-Seen", b"1"), Accept()]}))

    async def main() -> str:
        with MilterClient(address, timeout=5) as client:
            return client.check(MSG).decision

    assert asyncio.run(main()) == "accept"


def test_sync_client_creates_no_event_loop(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    address, _ = serve()

    def no_loop() -> None:
        raise AssertionError("the blocking client created an event loop")

    monkeypatch.setattr(asyncio, "new_event_loop", no_loop)
    monkeypatch.setattr(asyncio, "get_event_loop", no_loop)
    with MilterClient(address, timeout=5) as client:
        assert client.check(MSG).decision == "continue"
        assert client.check(MSG).decision == "continue"


def run_async_check(address: str, **keywords: Any) -> CheckResult:
    async def main() -> CheckResult:
        async with AsyncMilterClient(address, **keywords) as client:
            return await client.check(MSG)

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "error", "stage", "words"),
    [
        (SILENT, MilterTimeout, "mail", "took longer than 0.5 s to reply at MAIL"),
        (GARBAGE, MilterProtocolError, "mail", "broke the protocol during mail"),
        (CLOSE, MilterConnectionError, "mail", "closed the connection"),
    ],
)
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_both_drivers_fail_the_same_way(
    serve: Serve, driver: str, reply: object, error: type[Exception], stage: str, words: str
) -> None:
    address, _ = serve(Script(replies={Command.MAIL: reply}))  # type: ignore[dict-item]
    with pytest.raises(error) as info:
        if driver == "sync":
            check(address, MSG, timeout=0.5)
        else:
            run_async_check(address, timeout=0.5)
    assert info.value.stage == stage  # type: ignore[attr-defined]
    assert words in str(info.value) and address in str(info.value)


def test_one_options_object_for_both_clients_and_the_harness(serve: Serve) -> None:
    from milterkit.testing import MilterHarness

    options = ClientOptions(
        profile=SENDMAIL, client=ClientInfo("192.0.2.7", 4000, helo="opts.example"), timeout=5
    )
    address, server = serve()
    with MilterClient(address, options=options) as client:
        client.check(MSG)
    run_async_check(address, options=options)
    for log in server.logs:
        packets = log.packets()
        assert Connect(b"[192.0.2.7]", Family.INET, 4000, b"192.0.2.7") in packets
        assert Helo(b"opts.example") in packets
        assert "A" not in kinds(packets)  # the Sendmail profile: no ABORT after a message
    with MilterHarness(Milter, options=options) as harness:
        assert harness.mta.profile is SENDMAIL
        assert harness.mta.connect_message().port == 4000


def test_keywords_override_the_options_object(serve: Serve) -> None:
    options = ClientOptions(client=ClientInfo("192.0.2.7", 4000), timeout=30)
    client = MilterClient("unix:/nonexistent", options=options, timeout=2, helo="kw.example")
    assert client.options.timeout == 2
    assert client.options.client == ClientInfo("192.0.2.7", 4000, None, "kw.example")
    assert options.timeout == 30  # the shared object is untouched


def test_options_keep_a_private_read_only_copy_of_macros() -> None:
    macros = {"j": "mx.example"}
    options = ClientOptions(macros=macros)
    macros["j"] = "changed"
    assert options.macros["j"] == "mx.example"
    with pytest.raises(TypeError):
        options.macros["j"] = "x"  # type: ignore[index]
