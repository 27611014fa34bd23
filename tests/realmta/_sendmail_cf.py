"""Render the m4 .mc source for a private test Sendmail (see sendmail.py).

Kept apart from the process handling so the configuration can be read in
one place.  Choices and why:

* nocanonify, DontProbeInterfaces, private hosts file and a service switch
  with ``hosts files``: no DNS at all (the test machine has none).
* accept_unresolvable_domains / accept_unqualified_senders: test senders
  like alice@example.org do not resolve.
* no_default_msa and a single DAEMON_OPTIONS: listen only on 127.0.0.1:PORT.
* TrustStickyBit: the instance lives under /tmp, which Sendmail's file safety
  checks would otherwise reject (e.g. "cannot open alias database").
* High load-average thresholds: a busy CI box must not make Sendmail queue
  or refuse connections.
* LOCAL_RULE_0 sends example.com/example.org to the ``testdeliver``
  program mailer (runs as nobody, writes maildirs).
"""

from __future__ import annotations

from pathlib import Path

TEST_DOMAINS = ("example.com", "example.org")


def _milter_lines(milter: str, flags: str, timeouts: str) -> list[str]:
    if not milter:
        return []
    equates = f"S={milter}, F={flags}, T={timeouts}" if flags else f"S={milter}, T={timeouts}"
    return [
        f"INPUT_MAIL_FILTER(`milterkit', `{equates}')dnl",
        "define(`confMILTER_LOG_LEVEL', `14')dnl",
    ]


def _mailer_and_rules(root: Path, deliver_user: str) -> list[str]:
    # Mailer flags: l local, s strip quotes, n no "From " line, D/F/M add Date/From/Message-Id if
    # missing, P add Return-Path, q 250 for VRFY, u keep case. No "m": one
    # call per recipient so $u is a single local part.
    mailer = (
        f"Mtestdeliver, P=/bin/sh, F=lsnDFMPqu, U={deliver_user}, "
        "S=EnvFromL/HdrFromL, R=EnvToL/HdrToL, T=DNS/RFC822/X-Unix, "
        f"A=sh {root}/deliver.sh {root}/mail $h $u"
    )
    rules = []
    for dom in TEST_DOMAINS:
        for dot in (" .", ""):
            rules.append(f"R$* < @ {dom}{dot} > $*\t$#testdeliver $@ {dom} $: $1")
    return ["MAILER_DEFINITIONS", f"`{mailer}'", "LOCAL_RULE_0", *(f"`{r}'" for r in rules)]


def render_mc(
    *,
    cf_tree: Path,
    root: Path,
    port: int,
    hostname: str,
    milter: str,
    milter_flags: str,
    milter_timeouts: str,
    deliver_user: str,
    extra: str = "",
) -> str:
    """The complete .mc text; ``extra`` is appended before the mailers."""
    defines = {
        "confDOMAIN_NAME": hostname,
        "confSERVICE_SWITCH_FILE": f"{root}/service.switch",
        "confHOSTS_FILE": f"{root}/hosts",
        "confDONT_PROBE_INTERFACES": "true",
        "confBIND_OPTS": "-DNSRCH -DEFNAMES",
        "QUEUE_DIR": f"{root}/queue",
        "ALIAS_FILE": f"{root}/aliases",
        "STATUS_FILE": f"{root}/statistics",
        "HELP_FILE": str(cf_tree.parents[3] / "etc/mail/helpfile"),
        "confPID_FILE": f"{root}/sendmail.pid",
        "confDEF_USER_ID": deliver_user,
        "confTO_IDENT": "0s",
        "confQUEUE_LA": "100",
        "confREFUSE_LA": "200",
        "confDELAY_LA": "0",
        "confMIN_QUEUE_AGE": "0",
        "confLOG_LEVEL": "9",
        "confPRIVACY_FLAGS": "authwarnings",
        # the instance lives under /tmp (world writable, sticky)
        "confDONT_BLAME_SENDMAIL": "TrustStickyBit",
    }
    lines = [
        "divert(-1)",
        "divert(0)dnl",
        f"include(`{cf_tree}/m4/cf.m4')dnl",
        "VERSIONID(`milterkit private test instance')dnl",
        "OSTYPE(`linux')dnl",
        *(f"define(`{k}', `{v}')dnl" for k, v in defines.items()),
        "FEATURE(`nocanonify')dnl",
        "FEATURE(`no_default_msa')dnl",
        "FEATURE(`accept_unresolvable_domains')dnl",
        "FEATURE(`accept_unqualified_senders')dnl",
        f"RELAY_DOMAIN(`{' '.join(TEST_DOMAINS)}')dnl",
        f"DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl",
        *_milter_lines(milter, milter_flags, milter_timeouts),
        extra,
        "MAILER(`local')dnl",
        "MAILER(`smtp')dnl",
        *_mailer_and_rules(root, deliver_user),
    ]
    return "\n".join(lines) + "\n"
