"""CPU per message of MacroStore alone: the MACRO packets of one Postfix-like message.

The store takes about a sixth of the session's CPU (one packet before nearly
every command), so it is measured on its own too: a new store per message,
each packet through ``adopt`` as FilterConnection's fast path calls it. Prints
the best CPU microseconds per message over several batches (the least
disturbed by other load), and which file the store came from, so a compiled
build (``MILTERKIT_MYPYC=1 python setup.py build_ext --inplace``) and
``MILTERKIT_PURE=1`` can be told apart.

    python benchmarks/macro_micro.py [--observer]

``--observer`` sets a no-op :attr:`MacroStore.observer`, to measure what the
hook costs when used (unset it costs one ``is not None`` test per packet).
    PYTHONPATH=/other/checkout/src python benchmarks/macro_micro.py   # A/B
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from milterkit.protocol import macros

#: The MACRO packets of one message, as Postfix sends them with its default
#: milter macros (CONNECT, HELO, MAIL, RCPT, DATA, a few headers, EOH, body, EOM).
PACKETS = (
    b"Cj\0mx.example\0{daemon_name}\0smtpd\0_\0client.example [192.0.2.1]\0",
    b"H{tls_version}\0TLSv1.3\0{cipher}\0TLS_AES_256_GCM_SHA384\0",
    b"M{mail_addr}\0a@example.org\0{mail_host}\0example.org\0{mail_mailer}\0esmtp\0",
    b"R{rcpt_addr}\0b@example.net\0{rcpt_host}\0example.net\0{rcpt_mailer}\0smtp\0",
    b"T\0",
    b"L\0",
    b"L\0",
    b"L\0",
    b"N\0",
    b"B\0",
    b"E{i}\0004Bench1234\0",
)
BATCHES = 15
MESSAGES = 2000


def ignore(stage: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
    """The observer of --observer: does nothing, so only the call is measured."""


def batch(observer: macros.MacroObserver | None) -> float:
    """CPU seconds for MESSAGES messages, a new store each."""
    start = time.process_time()
    for _ in range(MESSAGES):
        store = macros.MacroStore()
        if observer is not None:  # (an older checkout has no observer: A/B without it)
            store.observer = observer
        for packet in PACKETS:
            store.adopt(packet)
        store.end_message()
    return time.process_time() - start


def main(argv: list[str]) -> None:
    observer = ignore if "--observer" in argv else None
    best = min(batch(observer) for _ in range(BATCHES))
    source = Path(macros.__file__ or "?").name
    print(
        f"{best / MESSAGES * 1e6:.2f} us CPU per message of {len(PACKETS)} MACRO packets "
        f"(best of {BATCHES} x {MESSAGES}; {source}"
        f"{', observer set' if observer is not None else ''})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
