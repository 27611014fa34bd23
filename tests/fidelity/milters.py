"""Milters for the protocol-fidelity suite (issue 10), served by the production daemon.

:class:`FidelityMilter` reports what it saw in headers it adds at end of
message, so a test reads the delivered bytes to learn how the negotiation
went at each Postfix ``milter_protocol``:

* ``X-Fid-Body-Calls``: how often ``body()`` ran (it answers SKIP the first time);
* ``X-Fid-Client-Addr``: the ``{client_addr}`` macro, requested through the
  OPTNEG macro lists (Postfix does not send it by default);
* ``X-Fid-Seen-Lead``: ``repr()`` of the value of the ``X-Lead`` header as
  the milter got it (``leading_space = True``: verbatim);
* ``X-Fid-Added``: added with the value ``LEAD_VALUE`` (leading space included);
* ``X-Fid-Connect-Error``: what ``add_header()`` in ``connect()`` raised.

``abort()`` logs the queue id and sender it still sees, for the log check.
A recipient starting with ``nl-`` is refused with a reply text ending in a newline.
"""

from __future__ import annotations

from milterkit.milter import Family, Milter, ReplyCode, Response, Skip
from milterkit.protocol.constants import Action

#: The raw value of the header the milter adds; verbatim, so the space is ours.
LEAD_VALUE = " exactly one space"


class FidelityMilter(Milter):
    actions = Action.ADD_HEADERS
    leading_space = True
    macros = {"connect": ["{client_addr}"]}

    def __init__(self) -> None:
        self.connect_error = "none"
        self.body_calls = 0
        self.seen_lead = "absent"

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Response | None:
        try:
            self.add_header("X-Fid-From-Connect", "yes")
        except Exception as exc:
            self.connect_error = f"{type(exc).__name__}: {exc}"
        return None

    def mail_from(self, sender: str, params: list[str]) -> Response | None:
        self.body_calls = 0
        self.seen_lead = "absent"
        return None

    def rcpt_to(self, recipient: str, params: list[str]) -> Response | None:
        if recipient.startswith("<nl-"):
            return ReplyCode(550, "rejected by fidelity\n", "5.7.1")  # trailing newline
        return None

    def header(self, name: str, value: str) -> Response | None:
        if name == "X-Lead":
            self.seen_lead = repr(value)
        return None

    def body(self, chunk: bytes) -> Response | None:
        self.body_calls += 1
        return Skip()

    def end_of_message(self) -> Response | None:
        # leading_space: values go out verbatim, so the reports bring their own space
        self.add_header("X-Fid-Body-Calls", f" {self.body_calls}")
        self.add_header("X-Fid-Client-Addr", f" {self.macro_values.get('{client_addr}')}")
        self.add_header("X-Fid-Seen-Lead", f" {self.seen_lead}")
        self.add_header("X-Fid-Added", LEAD_VALUE)
        self.add_header("X-Fid-Connect-Error", f" {self.connect_error}")
        return None

    def abort(self) -> None:
        self.log.warning(
            "fidelity abort: i=%s mail_addr=%s",
            self.macro_values.get("i"),
            self.macro_values.get("{mail_addr}"),
        )
