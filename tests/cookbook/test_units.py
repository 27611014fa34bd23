"""The systemd units of examples/cookbook/systemd start their filter with valid settings."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest

UNITS = sorted(
    (Path(__file__).resolve().parents[2] / "examples/cookbook/systemd").glob("*.service")
)


def exec_start(unit: Path) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_there_is_a_unit_per_filter():
    assert [u.name for u in UNITS] == [
        f"milterkit-{n}.service"
        for n in ("attachments", "clamav", "dkim", "greylist", "spamassassin")
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_unit_command_line_is_valid(unit, dkim_keys, tmp_path):
    argv = exec_start(unit)
    assert argv[:2] == ["/opt/milterkit/bin/python", "-m"]
    module = importlib.import_module(argv[2])
    key = str(dkim_keys[0].path)
    options = [
        a.rsplit(":", 1)[0] + ":" + key
        if a.endswith(".pem")
        else a.replace("/var/lib", str(tmp_path))
        for a in argv[3:]
    ]
    args = module.build_parser().parse_args(options)
    assert args.socket == f"unix:/run/{unit.stem}/{argv[2].rsplit('.', 1)[1]}.sock"
    assert args.user == "milterkit" and args.socket_group == "postfix"
    module.settings_from_args(args)


@pytest.mark.parametrize(
    ("module", "options"),
    [
        ("dkim", ["--key", "--canonicalization", "--internal", "--txt-file"]),
        ("attachments", ["--reject-extension", "--strip-type", "--max-attachment-size"]),
        ("greylist", ["--store", "--delay", "--retry-window", "--allow-network"]),
        ("clamav", ["--clamd", "--infected", "--on-error", "--max-scan-bytes"]),
        ("spamassassin", ["--spamd", "--quarantine-score", "--reject-score", "--max-size"]),
    ],
)
def test_help_documents_the_filter_and_daemon_options(module, options, capsys):
    main = importlib.import_module(f"milterkit.contrib.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in [*options, "--socket", "--workers", "--user", "--error-decision"]:
        assert option in text, option
