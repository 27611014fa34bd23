"""One options object for every MTA-side entry point.

:func:`milterkit.client.check`, :class:`~milterkit.client.MilterClient`,
:class:`~milterkit.client.AsyncMilterClient`, :func:`milterkit.testing.check`
and :class:`~milterkit.testing.MilterHarness` all pretend to be the same MTA,
so they take the same settings: a :class:`ClientOptions`, built once and
passed as ``options=``::

    opts = ClientOptions(profile=SENDMAIL, client=ClientInfo("192.0.2.1"), timeout=5)
    with MilterClient("inet:8891@127.0.0.1", options=opts) as client: ...
    with MilterHarness(MyMilter, options=opts) as mta: ...

The same settings are also accepted as plain keywords (``timeout=5``,
``client_address="192.0.2.1"``), as in the README; they are typed once, in
:class:`ClientKeywords`, and override the fields of ``options`` when both are
given (:meth:`ClientOptions.with_keywords`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypedDict

from milterkit.client.limits import DEFAULT_MAX_MODIFICATIONS, DEFAULT_MAX_REPLY_BYTES
from milterkit.client.session import ClientInfo, MTASession
from milterkit.mtaprofile import POSTFIX, MTAProfile

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_TIMEOUT", "ClientKeywords", "ClientOptions"]

#: Seconds a filter has for each reply; Postfix's milter_command_timeout is 30 s.
#: A deadline from when the command was sent: PROGRESS does not extend it
#: (Sendmail's E= end-of-message timeout works the same way).
DEFAULT_TIMEOUT = 30.0

# The ClientKeywords that describe the SMTP client rather than the MTA.
_CLIENT_INFO_KEYWORDS = {
    "client_address": "address",
    "client_port": "port",
    "hostname": "hostname",
    "helo": "helo",
}


@dataclass(frozen=True)
class ClientOptions:
    """How the fake MTA behaves towards a filter.

    ``profile`` is the MTA to imitate and ``client`` the SMTP client it
    serves. ``version``/``actions``/``protocol`` override the profile's OPTNEG
    offer. ``macros`` overrides macro values by name (see
    :class:`~milterkit.client.session.MTASession`). ``timeout`` is each
    command's deadline for its complete reply, counted from sending it
    (PROGRESS does not extend it); ``connect_timeout`` defaults to it.
    ``max_modifications`` and ``max_reply_bytes`` bound one message's replies
    (None: no bound; see :mod:`milterkit.client.limits`). The in-memory
    harness has no socket, so it ignores the two timeouts.
    """

    profile: MTAProfile = POSTFIX
    client: ClientInfo = field(default_factory=ClientInfo)
    macros: Mapping[str, str] = field(default_factory=dict)
    version: int | None = None
    actions: int | None = None
    protocol: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float | None = None
    max_modifications: int | None = DEFAULT_MAX_MODIFICATIONS
    max_reply_bytes: int | None = DEFAULT_MAX_REPLY_BYTES

    def __post_init__(self) -> None:
        # A private read-only copy: the caller's dict may change after this
        # object was built, and the options are shared by every connection.
        object.__setattr__(self, "macros", MappingProxyType(dict(self.macros)))

    @property
    def effective_connect_timeout(self) -> float:
        return self.timeout if self.connect_timeout is None else self.connect_timeout

    def with_keywords(self, **keywords: Unpack[ClientKeywords]) -> ClientOptions:
        """A copy with the loose keywords applied (client_* go into :attr:`client`)."""
        if not keywords:
            return self
        changes: dict[str, Any] = dict(keywords)
        info = {
            field_name: changes.pop(keyword)
            for keyword, field_name in _CLIENT_INFO_KEYWORDS.items()
            if keyword in changes
        }
        if "macros" in changes and changes["macros"] is None:
            changes["macros"] = {}
        client = dataclasses.replace(self.client, **info)
        return dataclasses.replace(self, client=client, **changes)

    def new_session(self) -> MTASession:
        """A fresh sans-I/O MTA session for one filter connection."""
        return MTASession(
            self.profile,
            client=self.client,
            version=self.version,
            actions=self.actions,
            protocol=self.protocol,
            macros=self.macros,
            max_modifications=self.max_modifications,
            max_reply_bytes=self.max_reply_bytes,
        )


class ClientKeywords(TypedDict, total=False):
    """The settings of :class:`ClientOptions` as loose keyword arguments.

    ``client_address``, ``client_port``, ``hostname`` and ``helo`` are the
    fields of :class:`~milterkit.client.session.ClientInfo`; the others are
    :class:`ClientOptions` fields of the same name.
    """

    profile: MTAProfile
    client_address: str | None
    client_port: int
    hostname: str | None
    helo: str
    macros: Mapping[str, str] | None
    version: int | None
    actions: int | None
    protocol: int | None
    timeout: float
    connect_timeout: float | None
    max_modifications: int | None
    max_reply_bytes: int | None


def resolve(options: ClientOptions | None, **keywords: Unpack[ClientKeywords]) -> ClientOptions:
    """``options`` (or the defaults) with the loose keywords applied on top."""
    return (options or ClientOptions()).with_keywords(**keywords)
