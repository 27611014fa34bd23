"""Real-world MIME shapes for the attachment policy tests (LF here, CRLF on the wire)."""

from __future__ import annotations

import base64
import io
import zipfile

EXE = b"MZ\x90\x00\x03\x00\x00\x00" + bytes(range(256)) * 4  # a PE header and binary noise
PDF = b"%PDF-1.4\n" + b"0123456789abcdef" * 64 + b"\n%%EOF\n"
EXE_B64 = base64.encodebytes(EXE).decode()
PDF_B64 = base64.encodebytes(PDF).decode()


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


HEAD = """From: Alice <alice@example.org>
To: bob@example.com
Subject: documents
Date: Thu, 03 Dec 2026 05:00:00 +0000
Message-ID: <{id}@example.org>
MIME-Version: 1.0
"""

# mixed( alternative(text, html), pdf (base64), exe (base64) )
NESTED = crlf(
    HEAD.format(id="nested")
    + f"""Content-Type: multipart/mixed; boundary="outer-1"

This is a multi-part message in MIME format.
--outer-1
Content-Type: multipart/alternative; boundary="inner-2"

--inner-2
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Hello Bob, the invoice is attached. Caf=C3=A9 at 10?
--inner-2
Content-Type: text/html; charset=utf-8

<p>Hello Bob, the invoice is attached.</p>
--inner-2--

--outer-1
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

{PDF_B64}
--outer-1
Content-Type: application/octet-stream; name="setup.exe"
Content-Disposition: attachment; filename="setup.exe"
Content-Transfer-Encoding: base64

{EXE_B64}
--outer-1--
epilogue kept
"""
)

# RFC 2231 continuations and charset: the name is "Rechnung €.exe" split over two parameters.
RFC2231 = crlf(
    HEAD.format(id="rfc2231")
    + f"""Content-Type: multipart/mixed; boundary="b2231"

--b2231
Content-Type: text/plain; charset=us-ascii

See attachment.
--b2231
Content-Type: application/octet-stream
Content-Disposition: attachment;
 filename*0*=utf-8''Rechnung%20%E2%82%AC;
 filename*1*=.exe
Content-Transfer-Encoding: base64

{EXE_B64}
--b2231--
"""
)

# Outlook style RFC 2047 name; quoted-printable attachment; a text file kept.
RFC2047_QP = crlf(
    HEAD.format(id="qp")
    + """Content-Type: multipart/mixed; boundary="qp-b"

--qp-b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Two files.
--qp-b
Content-Type: text/x-script; name="=?utf-8?B?c2tyaXB0LmpzCg==?="
Content-Disposition: attachment; filename="=?utf-8?Q?skript=2Ejs?="
Content-Transfer-Encoding: quoted-printable

var a =3D 1;=0Aalert(a);
--qp-b
Content-Type: text/plain; name="notes.txt"
Content-Disposition: attachment; filename="notes.txt"
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 notes
--qp-b--
"""
)

# The final boundary never comes (a truncating mailer): parts still parse.
NO_FINAL_BOUNDARY = crlf(
    HEAD.format(id="truncated")
    + f"""Content-Type: multipart/mixed; boundary="cut"

--cut
Content-Type: text/plain

Body text.
--cut
Content-Type: application/x-msdownload; name="tool.exe"
Content-Disposition: attachment; filename="tool.exe"
Content-Transfer-Encoding: base64

{EXE_B64}"""
)

# A forwarded message (message/rfc822) that carries the executable.
FORWARDED = crlf(
    HEAD.format(id="fwd")
    + f"""Content-Type: multipart/mixed; boundary="fwd-outer"

--fwd-outer
Content-Type: text/plain

Forwarding this.
--fwd-outer
Content-Type: message/rfc822

From: mallory@example.net
Subject: original
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="fwd-inner"

--fwd-inner
Content-Type: text/plain

Run it.
--fwd-inner
Content-Type: application/octet-stream; name="run.exe"
Content-Disposition: attachment; filename="run.exe"
Content-Transfer-Encoding: base64

{EXE_B64}
--fwd-inner--

--fwd-outer--
"""
)

# No multipart at all: the whole message is the attachment.
SINGLE_PART = crlf(
    HEAD.format(id="single")
    + f"""Content-Type: application/octet-stream; name="update.exe"
Content-Disposition: attachment; filename="update.exe"
Content-Transfer-Encoding: base64

{EXE_B64}"""
)

PLAIN = crlf(HEAD.format(id="plain") + "Content-Type: text/plain\n\nJust text.\n")


def zip_of(*names: str) -> bytes:
    """A ZIP archive holding small files with these names."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in names:
            archive.writestr(name, b"content of " + name.encode())
    return out.getvalue()


def with_zip(archive: bytes, name: str = "documents.zip") -> bytes:
    """A message with a text part and ``archive`` attached as application/zip."""
    encoded = base64.encodebytes(archive).decode()
    return crlf(
        HEAD.format(id="zip")
        + f"""Content-Type: multipart/mixed; boundary="zz"

--zz
Content-Type: text/plain

The documents.
--zz
Content-Type: application/zip; name="{name}"
Content-Disposition: attachment; filename="{name}"
Content-Transfer-Encoding: base64

{encoded}
--zz--
"""
    )
