"""The canonical benchmark milter on purepythonmilter (asyncio streams).

A hook for every step, each annotated as returning ``Continue`` so
purepythonmilter negotiates the step *with* a reply (it reads the return
annotation); end of message appends one header and accepts.

Usage: python ppm_canonical.py PORT
"""

from __future__ import annotations

import logging
import sys

from purepythonmilter import (  # type: ignore[import-not-found]
    Accept,
    AppendHeader,
    BodyChunk,
    Connect,
    Continue,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Header,
    Helo,
    MailFrom,
    PurePythonMilter,
    RcptTo,
)


async def on_connect(cmd: Connect) -> Continue:
    return Continue()


async def on_helo(cmd: Helo) -> Continue:
    return Continue()


async def on_mail_from(cmd: MailFrom) -> Continue:
    return Continue()


async def on_rcpt_to(cmd: RcptTo) -> Continue:
    return Continue()


async def on_data(cmd: Data) -> Continue:
    return Continue()


async def on_header(cmd: Header) -> Continue:
    return Continue()


async def on_end_of_headers(cmd: EndOfHeaders) -> Continue:
    return Continue()


async def on_body_chunk(cmd: BodyChunk) -> Continue:
    return Continue()


async def on_end_of_message(cmd: EndOfMessage) -> Accept:
    return Accept(manipulations=[AppendHeader(headername="X-Bench", headertext="ppm")])


canonical = PurePythonMilter(
    name="canonical",
    hook_on_connect=on_connect,
    hook_on_helo=on_helo,
    hook_on_mail_from=on_mail_from,
    hook_on_rcpt_to=on_rcpt_to,
    hook_on_data=on_data,
    hook_on_header=on_header,
    hook_on_end_of_headers=on_end_of_headers,
    hook_on_body_chunk=on_body_chunk,
    hook_on_end_of_message=on_end_of_message,
    can_add_headers=True,
)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    canonical.run_server(host="127.0.0.1", port=int(sys.argv[1]))


if __name__ == "__main__":
    main()
