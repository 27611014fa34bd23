"""The step table (protocol/steps.py) and every table derived from it.

The expected values below are the tables as they were written out by hand
before the step table existed (for the reply sets: what the old per-command
checks let through), so these tests show that deriving them changed nothing.
"""

from __future__ import annotations

import pytest

from milterkit import milter
from milterkit.cli import bench
from milterkit.protocol import constants, filter, macros, messages, mta
from milterkit.protocol.constants import Command, MacroStage, ProtocolFlag, Reply
from milterkit.protocol.constants import ProtocolFlag as P
from milterkit.protocol.steps import STEP_BY_CODE, STEP_BY_MESSAGE, STEPS, Step
from milterkit.runtime import observe

C, R = Command, Reply
_FINAL = {R.CONTINUE, R.ACCEPT, R.REJECT, R.TEMPFAIL, R.REPLYCODE, R.PROGRESS}
_MODIFICATIONS = {
    R.ADDHEADER,
    R.INSHEADER,
    R.CHGHEADER,
    R.CHGFROM,
    R.ADDRCPT,
    R.ADDRCPT_PAR,
    R.DELRCPT,
    R.REPLBODY,
    R.QUARANTINE,
}
_ANSWERED = [
    C.CONNECT,
    C.HELO,
    C.MAIL,
    C.RCPT,
    C.DATA,
    C.HEADER,
    C.EOH,
    C.BODY,
    C.BODYEOB,
    C.UNKNOWN,
]


def test_one_row_per_command_in_command_order() -> None:
    assert [s.command for s in STEPS] == list(C)
    assert {int(s.command): s for s in STEPS} == STEP_BY_CODE
    assert all(STEP_BY_MESSAGE[s.message] is s for s in STEPS)


def test_a_step_is_frozen() -> None:
    step = STEP_BY_CODE[ord("M")]
    assert isinstance(step, Step)
    with pytest.raises(AttributeError):
        step.position = 3  # type: ignore[misc]


def test_no_send_and_no_reply_flags_unchanged() -> None:
    assert constants.NO_SEND_FLAG == {
        C.CONNECT: P.NOCONNECT,
        C.HELO: P.NOHELO,
        C.MAIL: P.NOMAIL,
        C.RCPT: P.NORCPT,
        C.DATA: P.NODATA,
        C.HEADER: P.NOHDRS,
        C.EOH: P.NOEOH,
        C.BODY: P.NOBODY,
        C.UNKNOWN: P.NOUNKNOWN,
    }
    assert constants.NO_REPLY_FLAG == {
        C.CONNECT: P.NR_CONN,
        C.HELO: P.NR_HELO,
        C.MAIL: P.NR_MAIL,
        C.RCPT: P.NR_RCPT,
        C.DATA: P.NR_DATA,
        C.HEADER: P.NR_HDR,
        C.EOH: P.NR_EOH,
        C.BODY: P.NR_BODY,
        C.UNKNOWN: P.NR_UNKN,
    }
    assert {C.MACRO, C.ABORT, C.QUIT, C.QUIT_NC} == constants.UNANSWERED_COMMANDS


def test_versions_and_macro_stages_unchanged() -> None:
    assert constants.COMMAND_SINCE_VERSION == {C.UNKNOWN: 3, C.DATA: 4}
    assert constants.STAGE_LETTER == {
        MacroStage.CONNECT: C.CONNECT,
        MacroStage.HELO: C.HELO,
        MacroStage.ENVFROM: C.MAIL,
        MacroStage.ENVRCPT: C.RCPT,
        MacroStage.DATA: C.DATA,
        MacroStage.EOM: C.BODYEOB,
        MacroStage.EOH: C.EOH,
    }
    # PROTOCOL.md section 2: the version that brought each command
    since = {s.command: s.since for s in STEPS if s.since > 1}
    assert since == {C.EOH: 2, C.UNKNOWN: 3, C.DATA: 4, C.QUIT_NC: 6}


def test_macro_letters_are_the_stages_the_store_keeps() -> None:
    letters = {int(s.command) for s in STEPS if s.macro_letter}
    assert letters == macros.STAGES


def test_filter_order_tables_unchanged() -> None:
    assert filter._POSITION == {
        C.MAIL: 1,
        C.RCPT: 2,
        C.DATA: 3,
        C.HEADER: 4,
        C.EOH: 5,
        C.BODY: 6,
        C.BODYEOB: 7,
    }
    assert {C.RCPT, C.HEADER, C.BODY} == filter._REPEATABLE
    assert filter._MESSAGE_OVER == 8


def test_replies_that_end_the_message() -> None:
    final_ends = {R.ACCEPT, R.REJECT, R.TEMPFAIL, R.DISCARD, R.REPLYCODE}
    expected: dict[int, frozenset[int]] = {int(c): frozenset() for c in C}
    for command in (C.MAIL, C.DATA, C.HEADER, C.EOH, C.BODY):
        expected[command] = frozenset(final_ends)
    expected[C.RCPT] = frozenset({R.ACCEPT, R.DISCARD})
    expected[C.BODYEOB] = frozenset(final_ends | {R.CONTINUE})  # every final reply
    assert expected == filter._ENDS_MESSAGE


def test_filter_side_replies() -> None:
    """SKIP only to BODY, modifications only at end of message, no DISCARD to C/H."""
    expected = {int(c): frozenset[int]() for c in C}
    expected[C.OPTNEG] = frozenset({R.OPTNEG})
    for command in _ANSWERED:
        expected[command] = frozenset(_FINAL | {R.DISCARD})
    expected[C.CONNECT] = expected[C.HELO] = frozenset(_FINAL)
    expected[C.BODY] |= {R.SKIP}
    expected[C.BODYEOB] |= _MODIFICATIONS
    assert expected == filter._ALLOWED
    assert filter._SKIP_TARGETS == "BODY"


def test_mta_side_replies() -> None:
    """SKIP to RCPT/HEADER/BODY as Postfix takes it; SHUTDOWN and CONN_FAIL anywhere."""
    expected = {int(c): frozenset[int]() for c in C}
    expected[C.OPTNEG] = frozenset({R.OPTNEG})
    extra = {R.SHUTDOWN, R.CONN_FAIL}
    for command in _ANSWERED:
        expected[command] = frozenset(_FINAL | extra | {R.DISCARD})
    expected[C.CONNECT] = expected[C.HELO] = frozenset(_FINAL | extra)
    for command in (C.RCPT, C.HEADER, C.BODY):
        expected[command] |= {R.SKIP}
    expected[C.BODYEOB] |= _MODIFICATIONS
    assert expected == mta._ACCEPTS


def test_the_skip_difference_shows_as_two_columns() -> None:
    differ = {
        s.command: (Reply.SKIP in s.filter_replies, Reply.SKIP in s.mta_accepts)
        for s in STEPS
        if (Reply.SKIP in s.filter_replies) != (Reply.SKIP in s.mta_accepts)
    }
    assert differ == {C.RCPT: (False, True), C.HEADER: (False, True)}


def test_message_classes_match_the_decoder() -> None:
    assert set(messages.COMMAND_TYPES) == set(STEP_BY_CODE)
    for code, unpack in messages.COMMAND_TYPES.items():
        assert unpack.__self__ is STEP_BY_CODE[code].message  # type: ignore[attr-defined]


def test_callback_tables_unchanged() -> None:
    assert milter.CALLBACK_NO_FLAG == {
        "connect": ProtocolFlag.NOCONNECT,
        "helo": ProtocolFlag.NOHELO,
        "mail_from": ProtocolFlag.NOMAIL,
        "rcpt_to": ProtocolFlag.NORCPT,
        "data": ProtocolFlag.NODATA,
        "header": ProtocolFlag.NOHDRS,
        "end_of_headers": ProtocolFlag.NOEOH,
        "body": ProtocolFlag.NOBODY,
        "unknown": ProtocolFlag.NOUNKNOWN,
    }
    # the session builds its callback list from this order
    assert list(milter.CALLBACK_NO_FLAG) == [
        "connect",
        "helo",
        "mail_from",
        "rcpt_to",
        "data",
        "header",
        "end_of_headers",
        "body",
        "unknown",
    ]
    assert milter.CALLBACK_NR_FLAG == {
        "connect": ProtocolFlag.NR_CONN,
        "helo": ProtocolFlag.NR_HELO,
        "mail_from": ProtocolFlag.NR_MAIL,
        "rcpt_to": ProtocolFlag.NR_RCPT,
        "data": ProtocolFlag.NR_DATA,
        "header": ProtocolFlag.NR_HDR,
        "end_of_headers": ProtocolFlag.NR_EOH,
        "body": ProtocolFlag.NR_BODY,
        "unknown": ProtocolFlag.NR_UNKN,
    }
    for step in STEPS:
        if step.callback is not None:
            assert hasattr(milter.Milter, step.callback), step


def test_stage_label_tables_unchanged() -> None:
    assert {
        messages.Connect: "connect",
        messages.Helo: "helo",
        messages.Mail: "mail_from",
        messages.Rcpt: "rcpt_to",
        messages.Data: "data",
        messages.Header: "header",
        messages.EndOfHeaders: "end_of_headers",
        messages.Body: "body",
        messages.EndOfMessage: "end_of_message",
        messages.Unknown: "unknown",
    } == observe._STAGES
    assert bench._STAGE_COMMAND == {
        "mail": C.MAIL,
        "rcpt": C.RCPT,
        "data": C.DATA,
        "header": C.HEADER,
        "eoh": C.EOH,
        "body": C.BODY,
        "eom": C.BODYEOB,
    }
