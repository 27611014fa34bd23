"""The one name for what a filter decided about a connection, message or recipient.

:class:`Decision` is used wherever milterkit talks about a decision: what a
callback may return, the daemon's ``error_decision``, ``CheckResult.decision``
and each stage's decision in the client, ``milterkit check``'s exit status,
``milterkit bench``'s counts, and the JSON output (as the lowercase value).

It is a ``str`` enum, so ``result.decision == "accept"`` is true for
``Decision.ACCEPT``, a decision prints and serialises as ``accept``, and
settings given as strings (``--error-decision tempfail``,
``error_decision="tempfail"``) are read with :meth:`Decision.parse`.

A custom SMTP reply (:class:`milterkit.ReplyCode`) is not a decision of its
own: it rejects with a 5xx code and tempfails with a 4xx one, and that is the
decision reported for it. SHUTDOWN and NOREPLY are what a client can see at
one step; a message's final decision is never one of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

__all__ = ["ERROR_DECISIONS", "Decision"]


class Decision(str, Enum):
    """What the filter decided; the value is the lowercase name used in text and JSON."""

    #: Go on to the next step; at end of message the MTA delivers.
    CONTINUE = "continue"
    #: Deliver without asking the filter about the rest of the message (or connection).
    ACCEPT = "accept"
    #: Refuse with a 5xx reply (the MTA's default text, or the filter's ReplyCode).
    REJECT = "reject"
    #: Refuse for now with a 4xx reply; the client retries later.
    TEMPFAIL = "tempfail"
    #: Accept the message and silently drop it.
    DISCARD = "discard"
    #: No more of this kind of step (the rest of the body, the other recipients).
    SKIP = "skip"
    #: SMFIR_SHUTDOWN as a client sees it: tempfail, and the MTA closes the SMTP
    #: session (421). It appears in a stage's decision; the message's decision is
    #: then TEMPFAIL. A milterkit milter cannot send it (Sendmail refuses it):
    #: return ``ReplyCode(421, ...)`` instead.
    SHUTDOWN = "shutdown"
    #: A step the filter does not answer (it negotiated no reply for it, the
    #: ``SMFIP_NR_*`` flags), as a client records it; not a callback's to return.
    NOREPLY = "noreply"

    def __str__(self) -> str:
        # The value, as StrEnum (3.11+) prints it; f-strings follow __str__ on
        # every supported version, so log lines and CLI text say "accept".
        return self.value

    @classmethod
    def parse(cls, value: Decision | str, allowed: Iterable[Decision] | None = None) -> Decision:
        """``value`` as a Decision: a member, or its value in any case (``"TempFail"``).

        ``allowed`` limits the answer (an error decision cannot be SKIP); the
        ValueError names the choices, as a setting's error message should.
        """
        choices = tuple(cls) if allowed is None else tuple(allowed)
        wanted = value.lower() if isinstance(value, str) else value
        for decision in choices:
            if decision.value == wanted:
                return decision
        names = ", ".join(decision.value for decision in choices)
        raise ValueError(f"{value!r} is not a decision here; expected one of {names}")


#: What the daemon may answer when a callback fails, times out or goes over a
#: limit (``error_decision``); TEMPFAIL is the default.
ERROR_DECISIONS = (Decision.TEMPFAIL, Decision.ACCEPT, Decision.REJECT, Decision.CONTINUE)
