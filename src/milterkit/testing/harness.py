"""Run a :class:`~milterkit.Milter` in memory against a fake MTA: no sockets, no threads.

The harness pairs the two halves milterkit already has: the MTA side
(:class:`~milterkit.client.session.MTASession`, the same engine
:func:`milterkit.client.check` uses over a socket) and the filter side
(:class:`~milterkit.session.MilterSession`, the same driver the daemon uses).
Bytes go from one to the other in memory (the filter side hands back what it
would send, :meth:`~milterkit.session.MilterSession.data_to_send`), so a test
sees exactly what a real MTA would see from the milter, and gets the same
:class:`~milterkit.result.CheckResult`, ``apply()`` included.

It is synchronous, for plain pytest tests; async callbacks run on a private
event loop owned by the harness, and sync callbacks as the daemon runs them
(``execution``: inline while fast, in a thread pool once slow or declared blocking).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from milterkit.client.options import ClientKeywords, ClientOptions, resolve
from milterkit.client.session import Exchange
from milterkit.decision import Decision
from milterkit.milter import Milter
from milterkit.result import CheckResult, MessageInput
from milterkit.runtime.execution import CallbackRunner, ExecutionSettings
from milterkit.session import MilterSession

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["HarnessError", "HarnessKeywords", "MilterFactory", "MilterHarness", "check"]

MilterFactory = type[Milter] | Callable[[], Milter]


class HarnessKeywords(ClientKeywords, total=False):
    """Every keyword :class:`MilterHarness` takes: the MTA's, then the filter side's."""

    options: ClientOptions | None
    error_decision: Decision | str
    callback_timeout: float | None
    execution: str | None
    reraise: bool
    logger: logging.Logger | None


class HarnessError(RuntimeError):
    """The milter under test left the fake MTA waiting, or closed on it."""


class MilterHarness:
    """One fake MTA connection to one Milter instance; several messages may follow.

    The fake MTA is set up as the clients are: ``options=`` (a
    :class:`~milterkit.client.ClientOptions`) and/or the same settings as
    keywords, e.g. ``profile=SENDMAIL`` to imitate Sendmail
    (:data:`~milterkit.mtaprofile.POSTFIX`, :data:`~milterkit.mtaprofile.SENDMAIL`,
    :data:`~milterkit.mtaprofile.V2_ONLY`) or ``version``/``actions``/``protocol``
    to change what it offers; the timeouts do not apply (no socket). With
    ``reraise=True`` an exception raised by a callback fails the test with its
    own traceback, instead of being answered with ``error_decision`` (what the
    daemon does, and what a test of that behaviour wants).
    """

    def __init__(
        self,
        milter: MilterFactory,
        *,
        options: ClientOptions | None = None,
        error_decision: Decision | str = Decision.TEMPFAIL,
        callback_timeout: float | None = None,
        execution: str | None = None,
        reraise: bool = False,
        logger: logging.Logger | None = None,
        **keywords: Unpack[ClientKeywords],
    ) -> None:
        settings = ExecutionSettings(
            mode=execution, error_decision=error_decision, callback_timeout=callback_timeout
        )
        self._loop = asyncio.new_event_loop()
        # The daemon's execution model, so blocking callbacks, timeouts and
        # actions from the thread pool behave here as they will in production.
        self._runner = CallbackRunner(settings, logger or logging.getLogger("milterkit"))
        self.filter = MilterSession(
            milter,
            connection_id="harness",
            logger=logger,
            settings=settings,
            runner=self._runner,
        )
        self.options = resolve(options, **keywords)
        self.mta = self.options.new_session()
        self._opened = False
        self._closed = False
        self._reraise = reraise

    @property
    def milter(self) -> Milter:
        """The Milter instance serving this connection, for inspecting its state."""
        return self.filter.milter

    def check(
        self,
        message: MessageInput,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        sender_args: Sequence[str] = (),
        recipient_args: Mapping[str, Sequence[str]] | None = None,
    ) -> CheckResult:
        """Run one message through the milter and return what the MTA would do.

        Sender and recipients default to the From and To/Cc headers.
        """
        self._open()
        run = self.mta.message(
            message,
            sender,
            recipients,
            sender_args=sender_args,
            recipient_args=recipient_args,
        )
        self._drive(run)
        return run.result

    def abort(self) -> None:
        self._feed(self.mta.abort())

    def close(self) -> None:
        """QUIT, as the MTA does at the end of the SMTP session; runs the close callback."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._opened and not self.filter.closed:
                self._feed(self.mta.quit())
            if not self.filter.closed:
                self._run(self.filter.connection_lost())
        finally:
            self._runner.shutdown()
            self._loop.close()

    def __enter__(self) -> MilterHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ wiring

    def _open(self) -> None:
        if self._closed:
            raise HarnessError("the harness was closed")
        if not self._opened:
            self._opened = True
            self._drive(self.mta.opening())

    def _drive(self, exchange: Exchange) -> None:
        out = exchange.start()
        while True:
            self._feed(out)
            self._raise_callback_error()
            if exchange.done:
                return
            replies = self.filter.data_to_send()
            if not replies and not self.filter.closed:
                raise HarnessError(f"the milter sent no reply at stage {exchange.stage!r}")
            out = exchange.receive_data(replies)

    def _raise_callback_error(self) -> None:
        errors = self.filter.callback_errors
        if self._reraise and errors:
            error = errors[0]
            errors.clear()
            raise error

    def _feed(self, data: bytes) -> None:
        if data and not self.filter.closed:
            self._run(self.filter.data_received(data))

    def _run(self, pending: object) -> None:
        while pending is not None:
            self._loop.run_until_complete(pending)  # type: ignore[arg-type]
            pending = self.filter.resume()


def check(
    milter: MilterFactory,
    message: MessageInput,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    sender_args: Sequence[str] = (),
    recipient_args: Mapping[str, Sequence[str]] | None = None,
    **keywords: Unpack[HarnessKeywords],
) -> CheckResult:
    """One message through a fresh harness: ``check(MyMilter, eml_bytes, sender=...)``.

    ``keywords`` are :class:`MilterHarness`'s (``options=``, ``profile=``,
    ``reraise=``, ...).
    """
    with MilterHarness(milter, **keywords) as harness:
        return harness.check(
            message,
            sender=sender,
            recipients=recipients,
            sender_args=sender_args,
            recipient_args=recipient_args,
        )
