"""Greylisting: the first delivery attempt of a (client network, sender, recipient) is deferred.

A legitimate MTA retries after a few minutes and is let through; much
spamware never retries. The triples live in a store shared by every worker,
and by several hosts behind a load balancer: SQLite (one host) or Redis.

    python -m milterkit.contrib.greylist --socket inet:8893@127.0.0.1 \\
        --store redis://10.0.0.5:6379/0 --delay 300 --allow-network 192.0.2.0/24

First attempts get ``451 4.7.1`` at RCPT; retries after ``--delay``
seconds (and within ``--retry-window``) pass, and the triple then passes
without delay for ``--pass-ttl``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from milterkit.contrib._common import (
    SERVICE_DECISIONS,
    Network,
    filter_parser,
    in_networks,
    main_with_settings,
    network_argument,
    service_failure,
)
from milterkit.contrib.resp import RedisAddress, RedisClient, RedisError
from milterkit.decision import Decision
from milterkit.milter import Continue, Milter, ReplyCode, Response
from milterkit.protocol.constants import Family

NEW, EARLY, PASS = "new", "early", "pass"


@dataclass(frozen=True)
class Timing:
    """The greylisting periods, in seconds."""

    delay: float = 300.0  # a retry before this is deferred again
    retry_window: float = 86400.0  # a first attempt not retried by then is forgotten
    pass_ttl: float = 36 * 86400.0  # a triple that passed passes this long after its last use


class GreylistStore(Protocol):
    """Where triples live; ``check`` records the attempt and says what it is."""

    def check(self, key: str, now: float, timing: Timing) -> tuple[str, float]:
        """(NEW | EARLY | PASS, seconds still to wait) for an attempt at ``now``."""
        ...

    def describe(self) -> str: ...


class SqliteStore:
    """One SQLite file shared by the workers (and daemons) of one host; WAL mode."""

    PURGE_EVERY = 1000  # checks between deletions of expired rows

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._checks = 0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # never use a parent's handle
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no fsync per check; a power cut may lose the last few
            # triples (those senders get greylisted once more), never corrupts.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS triplets (key TEXT PRIMARY KEY, "
                "first_seen REAL NOT NULL, passed INTEGER NOT NULL, expires REAL NOT NULL)"
            )
            self._db, self._pid = db, os.getpid()
        return self._db

    def check(self, key: str, now: float, timing: Timing) -> tuple[str, float]:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                verdict = self._check(db, key, now, timing)
                self._checks += 1
                if self._checks % self.PURGE_EVERY == 0:
                    db.execute("DELETE FROM triplets WHERE expires < ?", (now,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return verdict

    @staticmethod
    def _check(db: sqlite3.Connection, key: str, now: float, t: Timing) -> tuple[str, float]:
        row = db.execute(
            "SELECT first_seen, passed, expires FROM triplets WHERE key = ?", (key,)
        ).fetchone()
        if row is None or row[2] < now:
            db.execute(
                "INSERT OR REPLACE INTO triplets VALUES (?, ?, 0, ?)",
                (key, now, now + t.retry_window),
            )
            return NEW, t.delay
        first_seen, passed, _ = row
        if passed or now - first_seen >= t.delay:
            db.execute(
                "UPDATE triplets SET passed = 1, expires = ? WHERE key = ?", (now + t.pass_ttl, key)
            )
            return PASS, 0.0
        return EARLY, t.delay - (now - first_seen)


class RedisStore:
    """Triples in Redis, shared by every host; Redis expires them itself."""

    def __init__(self, url: str, timeout: float = 2.0, prefix: str = "greylist:") -> None:
        self.client = RedisClient(RedisAddress.parse(url), timeout)
        self.prefix = prefix

    def describe(self) -> str:
        return str(self.client.address)

    def check(self, key: str, now: float, timing: Timing) -> tuple[str, float]:
        """Value ``first_seen|passed|expires``; Redis expiry only cleans up (clock: ours)."""
        name = self.prefix + key
        window_ms = int(timing.retry_window * 1000)
        first = f"{now:.3f}|0|{now + timing.retry_window:.3f}"
        if self.client.command("SET", name, first, "NX", "PX", window_ms) == "OK":
            return NEW, timing.delay
        value = self.client.command("GET", name)
        fields = value.decode().split("|") if isinstance(value, bytes) else []
        if len(fields) != 3 or float(fields[2]) < now:  # gone, or expired by our clock
            self.client.command("SET", name, first, "PX", window_ms)
            return NEW, timing.delay
        first_seen, passed = float(fields[0]), fields[1] == "1"
        if passed or now - first_seen >= timing.delay:
            ttl = timing.pass_ttl
            record = f"{first_seen:.3f}|1|{now + ttl:.3f}"
            self.client.command("SET", name, record, "PX", int(ttl * 1000))
            return PASS, 0.0
        return EARLY, timing.delay - (now - first_seen)


def open_store(spec: str) -> GreylistStore:
    """``sqlite:/path``, ``redis://host:port/db`` or ``redis+unix:///path?db=N``."""
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:") :]
        if not path:
            raise ValueError("sqlite store needs a path: sqlite:/var/lib/greylist/greylist.db")
        return SqliteStore(path)
    if spec.startswith(("redis://", "redis+unix://")):
        return RedisStore(spec)
    raise ValueError(
        f"unknown store {spec!r}: use sqlite:/path, redis://host:port/db or redis+unix:///path"
    )


@dataclass
class GreylistSettings:
    store: GreylistStore
    timing: Timing = Timing()
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    allow_networks: tuple[Network, ...] = ()
    #: Recipients never greylisted: full addresses or ``@domain``, lower case.
    allow_recipients: frozenset[str] = frozenset()
    on_store_error: Decision | str = Decision.ACCEPT
    clock: Callable[[], float] = field(default=time.time)


class Greylist(Milter):
    """Defers the first attempt of each triple at RCPT; lets retries through."""

    macros = {"mail": ["{auth_authen}"]}  # noqa: RUF012 (the request; Milter types it)

    def __init__(self, settings: GreylistSettings) -> None:
        super().__init__()
        self.settings = settings
        self.client: str | None = None
        self.exempt = False
        self.sender = ""
        self.store_failed = False

    def connect(
        self, hostname: str, family: Family, address: str | None, port: int | None
    ) -> Response:
        self.client = address
        self.exempt = family not in (Family.INET, Family.INET6) or in_networks(
            address, self.settings.allow_networks
        )
        return Continue()

    def mail_from(self, sender: str, params: list[str]) -> Response:
        self.sender = bare(sender)
        self.store_failed = False
        if self.macro_values.get("{auth_authen}"):
            self.exempt = True  # authenticated for the rest of the connection
        return Continue()

    def rcpt_to(self, recipient: str, params: list[str]) -> Response:
        rcpt = bare(recipient)
        if self.exempt or self.allowed_recipient(rcpt):
            return Continue()
        key = f"{client_network(self.client, self.settings)}|{self.sender}|{rcpt}"
        try:
            verdict, wait = self.settings.store.check(
                key, self.settings.clock(), self.settings.timing
            )
        except (OSError, sqlite3.Error, RedisError, ValueError) as exc:
            return self.store_error(exc)
        if verdict == PASS:
            return Continue()
        self.log.info("greylisted (%s): %s", verdict, key)
        after = max(1, round(wait))
        text = f"Greylisted, please try again in {after} second{'s' if after > 1 else ''}"
        return ReplyCode(451, text, "4.7.1")

    def allowed_recipient(self, rcpt: str) -> bool:
        allow = self.settings.allow_recipients
        return rcpt in allow or "@" + rcpt.rpartition("@")[2] in allow

    def store_error(self, exc: Exception) -> Response:
        """Log once per message, then answer ``on_store_error`` for every recipient."""
        decision = self.settings.on_store_error
        if not self.store_failed:
            self.store_failed = True
            store = self.settings.store.describe()
            kind = type(exc).__name__
            self.log.error(
                "greylist store %s failed: %s: %s; answering %s", store, kind, exc, decision
            )
        if Decision.parse(decision, SERVICE_DECISIONS) is Decision.ACCEPT:
            return Continue()  # for this recipient: the message goes on to the others
        return service_failure(decision, "greylisting")


def bare(address: str) -> str:
    """``<Alice@Example.org>`` → ``alice@example.org``; ``<>`` → ``""``."""
    return address.strip().strip("<>").lower()


def client_network(address: str | None, settings: GreylistSettings) -> str:
    """The client's network in CIDR form (/24 and /64 by default); the address as is if odd."""
    if not address:
        return "unknown"
    literal = address[5:] if address.lower().startswith("ipv6:") else address
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener's view of an IPv4 client
    prefix = settings.ipv4_prefix if ip.version == 4 else settings.ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# ------------------------------------------------------------------ settings


def seconds(value: str) -> float:
    """``300``, ``5m``, ``4h``, ``36d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (value[:-1], value[-1].lower()) if value[-1:].isalpha() else (value, "s")
    try:
        result = float(number) * units[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration like 300, 5m, 4h or 36d"
        ) from None
    if result < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = filter_parser("python -m milterkit.contrib.greylist", __doc__.split("\n\n")[0])
    g = parser.add_argument_group("greylisting")
    g.add_argument(
        "--store",
        default="sqlite:/var/lib/milterkit-greylist/greylist.db",
        help="sqlite:/path, redis://[:password@]host:port/db or redis+unix:///path?db=N",
    )
    g.add_argument("--delay", type=seconds, default=300.0, help="minimum retry delay (300, 5m)")
    g.add_argument(
        "--retry-window",
        type=seconds,
        default=86400.0,
        help="how long a first attempt waits for its retry (1d)",
    )
    g.add_argument(
        "--pass-ttl",
        type=seconds,
        default=36 * 86400.0,
        help="how long a triple that passed keeps passing after its last use (36d)",
    )
    g.add_argument(
        "--ipv4-prefix",
        type=int,
        default=24,
        choices=range(8, 33),
        metavar="8-32",
        help="client IPv4 addresses are grouped by this prefix",
    )
    g.add_argument(
        "--ipv6-prefix",
        type=int,
        default=64,
        choices=range(16, 129),
        metavar="16-128",
        help="client IPv6 addresses are grouped by this prefix",
    )
    g.add_argument(
        "--allow-network",
        action="append",
        type=network_argument,
        default=[],
        metavar="CIDR",
        help="clients never greylisted (repeatable)",
    )
    g.add_argument(
        "--allow-recipient",
        action="append",
        default=[],
        metavar="ADDR|@DOMAIN",
        help="recipients never greylisted, e.g. postmaster@example.org (repeatable)",
    )
    g.add_argument(
        "--on-store-error",
        choices=SERVICE_DECISIONS,
        default="accept",
        help="the answer when the store fails",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> GreylistSettings:
    if args.retry_window < args.delay:
        raise ValueError("--retry-window must not be shorter than --delay")
    return GreylistSettings(
        store=open_store(args.store),
        timing=Timing(args.delay, args.retry_window, args.pass_ttl),
        ipv4_prefix=args.ipv4_prefix,
        ipv6_prefix=args.ipv6_prefix,
        allow_networks=tuple(args.allow_network),
        allow_recipients=frozenset(bare(r) for r in args.allow_recipient),
        on_store_error=args.on_store_error,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return main_with_settings(argv, build_parser(), settings_from_args, Greylist)


if __name__ == "__main__":
    sys.exit(main())
