"""The names issue 12 renamed still work for one release, each with a DeprecationWarning.

Every test checks both halves: the warning names the replacement, and the old
spelling does exactly what the new one does.
"""

from __future__ import annotations

from typing import Any

import pytest

import milterkit.protocol
from milterkit import Action, Milter
from milterkit.compat import libmilterphp
from milterkit.protocol import InsertHeader, ReplyCodePacket
from milterkit.protocol import messages as msg
from milterkit.testing import (
    MilterHarness,
    assert_header_changed,
    assert_header_inserted,
)

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def test_protocol_reply_code_is_the_packet_under_its_old_name() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"protocol\.ReplyCode is deprecated.*ReplyCodePacket"
    ):
        old = milterkit.protocol.ReplyCode
    assert old is ReplyCodePacket
    with pytest.warns(DeprecationWarning, match="ReplyCodePacket"):
        from milterkit.protocol import ReplyCode  # noqa: F401
    assert msg.ReplyCode is ReplyCodePacket  # the compiled module's plain alias
    with pytest.raises(AttributeError, match="has no attribute 'ReplyCod'"):
        milterkit.protocol.ReplyCod  # type: ignore[attr-defined]  # noqa: B018


def test_compat_message_is_message_array_under_its_old_name() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"libmilterphp\.Message is deprecated.*MessageArray"
    ):
        old = libmilterphp.Message
    assert old is libmilterphp.MessageArray
    assert "Message" not in libmilterphp.__all__
    with pytest.raises(AttributeError):
        libmilterphp.Nothing  # type: ignore[attr-defined]  # noqa: B018


def test_the_deprecated_names_warn_where_they_are_used() -> None:
    """stacklevel points at the user's line, not at milterkit (whose own uses fail tests)."""
    with pytest.warns(DeprecationWarning) as caught:
        milterkit.protocol.ReplyCode  # noqa: B018
        libmilterphp.Message  # noqa: B018
        _run(OldMacroReader)
        _run(OldOrder)
    assert {warning.filename for warning in caught} == {__file__}


# ------------------------------------------------------------------- macros


class OldMacroReader(Milter):
    """Asks for a macro with the class attribute and reads it the old way."""

    macros = {"mail": ["{auth_authen}"]}
    seen: Any = None

    def mail_from(self, sender: str, params: list[str]) -> None:
        type(self).seen = self.macros.get("{auth_authen}")


class NewMacroReader(Milter):
    macros = {"mail": ["{auth_authen}"]}
    seen: Any = None

    def mail_from(self, sender: str, params: list[str]) -> None:
        type(self).seen = self.macro_values.get("{auth_authen}")


def _run(milter: type[Milter], **check: Any) -> Any:
    with MilterHarness(milter, macros={"{auth_authen}": "alice"}) as mta:
        return mta.check(MESSAGE, **check)


def test_reading_self_macros_warns_and_gives_the_live_values() -> None:
    _run(NewMacroReader)
    assert NewMacroReader.seen == "alice"
    with pytest.warns(DeprecationWarning, match=r"self\.macros \(the macro values\).*macro_values"):
        _run(OldMacroReader)
    assert OldMacroReader.seen == "alice"


def test_the_class_attribute_macros_is_the_request_without_a_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    assert OldMacroReader.macros == {"mail": ["{auth_authen}"]}
    assert OldMacroReader.macro_request() == {2: "{auth_authen}"}

    class Inherits(OldMacroReader):
        pass

    class Overrides(OldMacroReader):
        macros = {"rcpt": "{rcpt_addr}"}

    class NoneInherits(OldMacroReader):
        macros = None  # type: ignore[assignment]

    class AsksNothing(OldMacroReader):
        macros = {}

    assert Inherits.macros is OldMacroReader.macros
    assert Overrides.macro_request() == {3: "{rcpt_addr}"}
    assert NoneInherits.macro_request() == {2: "{auth_authen}"}  # as before the rename
    assert AsksNothing.macro_request() == {}
    assert Milter.macros == {} and Milter.macro_request() == {}
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_setting_self_macros_warns_and_sets_the_values() -> None:
    """Unit tests faked the MTA's macros by assigning them to an instance."""
    milter = NewMacroReader()
    with pytest.warns(DeprecationWarning, match=r"setting self\.macros.*macro_values"):
        milter.macros = {"{auth_authen}": "bob"}  # type: ignore[misc]
    milter.mail_from("<a@example.org>", [])
    assert NewMacroReader.seen == "bob"
    assert NewMacroReader.macros == {"mail": ["{auth_authen}"]}  # the request is untouched


# ------------------------------------------------------------- header edits


class NewOrder(Milter):
    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS

    def end_of_message(self) -> None:
        self.insert_header("X-Top", "top", 0)
        self.insert_header("X-Named", "named", index=2)
        self.change_header("Subject", "changed")
        self.change_header("X-Two", "second", 2)
        self.delete_header("X-Gone")


class OldOrder(Milter):
    actions = Action.ADD_HEADERS | Action.CHANGE_HEADERS

    def end_of_message(self) -> None:
        self.insert_header(0, "X-Top", "top")  # type: ignore[arg-type]
        self.insert_header(index=2, name="X-Named", value="named")
        self.change_header("Subject", 1, "changed")  # type: ignore[arg-type]
        self.change_header("X-Two", 2, "second")  # type: ignore[arg-type]
        self.delete_header("X-Gone")


def test_header_edits_take_name_value_index() -> None:
    result = _run(NewOrder)
    assert result.modifications == [
        InsertHeader(0, b"X-Top", b"top"),
        InsertHeader(2, b"X-Named", b"named"),
        msg.ChangeHeader(1, b"Subject", b"changed"),
        msg.ChangeHeader(2, b"X-Two", b"second"),
        msg.ChangeHeader(1, b"X-Gone", b""),
    ]
    assert_header_inserted(result, "X-Top", "top", 0)
    assert_header_changed(result, "Subject", "changed")
    assert_header_changed(result, "X-Two", "second", index=2)


def test_the_old_header_orders_warn_and_do_the_same() -> None:
    with pytest.warns(DeprecationWarning) as caught:
        result = _run(OldOrder)
    assert [str(w.message).split(" is deprecated")[0] for w in caught] == [
        "insert_header(index, name, value)",
        "change_header(name, index, value)",
        "change_header(name, index, value)",
    ]
    assert "use insert_header(name, value, index)" in str(caught[0].message)
    assert result.modifications == _run(NewOrder).modifications


def test_the_header_assertions_follow_the_same_order_and_warn_on_the_old() -> None:
    result = _run(NewOrder)
    with pytest.warns(DeprecationWarning, match=r"assert_header_inserted\(index, name, value\)"):
        assert_header_inserted(result, 0, "X-Top", "top")  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match=r"assert_header_changed\(name, index, value\)"):
        assert_header_changed(result, "X-Two", 2, "second")  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="expected a changed header"):
        assert_header_changed(result, "X-Two", "second")  # index 1 was not changed
