"""libmilter-style aliases: names.py == LIBMILTER_NAMES == the numbers of PROTOCOL.md."""

from __future__ import annotations

import pytest

from milterkit.protocol import constants, names
from milterkit.protocol.constants import LIBMILTER_NAMES

# PROTOCOL.md sections 2, 3, 4.2, 4.5 and 16.
EXPECTED: dict[str, int] = {
    # commands (section 2)
    "SMFIC_OPTNEG": ord("O"),
    "SMFIC_MACRO": ord("D"),
    "SMFIC_CONNECT": ord("C"),
    "SMFIC_HELO": ord("H"),
    "SMFIC_MAIL": ord("M"),
    "SMFIC_RCPT": ord("R"),
    "SMFIC_DATA": ord("T"),
    "SMFIC_HEADER": ord("L"),
    "SMFIC_EOH": ord("N"),
    "SMFIC_BODY": ord("B"),
    "SMFIC_BODYEOB": ord("E"),
    "SMFIC_UNKNOWN": ord("U"),
    "SMFIC_ABORT": ord("A"),
    "SMFIC_QUIT": ord("Q"),
    "SMFIC_QUIT_NC": ord("K"),
    # replies (section 3)
    "SMFIR_CONTINUE": 0x63,
    "SMFIR_ACCEPT": 0x61,
    "SMFIR_REJECT": 0x72,
    "SMFIR_TEMPFAIL": 0x74,
    "SMFIR_DISCARD": 0x64,
    "SMFIR_REPLYCODE": 0x79,
    "SMFIR_SKIP": 0x73,
    "SMFIR_PROGRESS": 0x70,
    "SMFIR_ADDHEADER": 0x68,
    "SMFIR_INSHEADER": 0x69,
    "SMFIR_CHGHEADER": 0x6D,
    "SMFIR_CHGFROM": 0x65,
    "SMFIR_ADDRCPT": 0x2B,
    "SMFIR_ADDRCPT_PAR": 0x32,
    "SMFIR_DELRCPT": 0x2D,
    "SMFIR_REPLBODY": 0x62,
    "SMFIR_QUARANTINE": 0x71,
    "SMFIR_SHUTDOWN": 0x34,
    "SMFIR_CONN_FAIL": 0x66,
    "SMFIR_SETSYMLIST": 0x6C,
    # actions (section 4.2)
    "SMFIF_NONE": 0,
    "SMFIF_ADDHDRS": 0x01,
    "SMFIF_CHGBODY": 0x02,
    "SMFIF_MODBODY": 0x02,
    "SMFIF_ADDRCPT": 0x04,
    "SMFIF_DELRCPT": 0x08,
    "SMFIF_CHGHDRS": 0x10,
    "SMFIF_QUARANTINE": 0x20,
    "SMFIF_CHGFROM": 0x40,
    "SMFIF_ADDRCPT_PAR": 0x80,
    "SMFIF_SETSYMLIST": 0x100,
    # protocol bits (section 4.2)
    "SMFIP_NOCONNECT": 0x1,
    "SMFIP_NOHELO": 0x2,
    "SMFIP_NOMAIL": 0x4,
    "SMFIP_NORCPT": 0x8,
    "SMFIP_NOBODY": 0x10,
    "SMFIP_NOHDRS": 0x20,
    "SMFIP_NOEOH": 0x40,
    "SMFIP_NR_HDR": 0x80,
    "SMFIP_NOHREPL": 0x80,
    "SMFIP_NOUNKNOWN": 0x100,
    "SMFIP_NODATA": 0x200,
    "SMFIP_SKIP": 0x400,
    "SMFIP_RCPT_REJ": 0x800,
    "SMFIP_NR_CONN": 0x1000,
    "SMFIP_NR_HELO": 0x2000,
    "SMFIP_NR_MAIL": 0x4000,
    "SMFIP_NR_RCPT": 0x8000,
    "SMFIP_NR_DATA": 0x10000,
    "SMFIP_NR_UNKN": 0x20000,
    "SMFIP_NR_EOH": 0x40000,
    "SMFIP_NR_BODY": 0x80000,
    "SMFIP_HDR_LEADSPC": 0x100000,
    "SMFIP_MDS_256K": 0x10000000,
    "SMFIP_MDS_1M": 0x20000000,
    "SMFIP_TEST": 0x80000000,
    # macro stages (section 4.5): EOM is 5, EOH is 6
    "SMFIM_CONNECT": 0,
    "SMFIM_HELO": 1,
    "SMFIM_ENVFROM": 2,
    "SMFIM_ENVRCPT": 3,
    "SMFIM_DATA": 4,
    "SMFIM_EOM": 5,
    "SMFIM_EOH": 6,
}

ALIASES = sorted(n for n in dir(names) if n[:5] in ("SMFIC", "SMFIR", "SMFIF", "SMFIP", "SMFIM"))


def test_names_module_matches_libmilter_names() -> None:
    assert set(ALIASES) == set(LIBMILTER_NAMES)
    for name in ALIASES:
        assert getattr(names, name) == LIBMILTER_NAMES[name], name


def test_libmilter_names_match_protocol_md() -> None:
    assert set(LIBMILTER_NAMES) == set(EXPECTED)
    for name, value in LIBMILTER_NAMES.items():
        assert int(value) == EXPECTED[name], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_alias_value(name: str) -> None:
    assert int(getattr(names, name)) == EXPECTED[name]


def test_alias_types() -> None:
    assert isinstance(names.SMFIC_HELO, constants.Command)
    assert isinstance(names.SMFIR_SKIP, constants.Reply)
    assert isinstance(names.SMFIF_ADDHDRS, constants.Action)
    assert isinstance(names.SMFIP_NR_BODY, constants.ProtocolFlag)
    assert isinstance(names.SMFIM_EOH, constants.MacroStage)
    assert names.SMFIR_SKIP != names.SMFIR_SHUTDOWN


def test_numeric_constants_of_section_16() -> None:
    assert constants.PROTOCOL_VERSION == 6
    assert constants.MIN_PROTOCOL_VERSION == 2
    assert constants.OPTNEG_LEN == 12
    assert constants.CHUNK_SIZE == 65535
    assert constants.MAX_DATA_SIZE == 65535
    assert constants.MDS_64K == 65535
    assert constants.MDS_256K == 262143
    assert constants.MDS_1M == 1048575
    assert constants.POSTFIX_MAX_PACKET == 1073741823
    assert int(constants.V1_ACTIONS) == 0x0F
    assert int(constants.V2_ACTIONS) == 0x3F
    assert int(constants.ALL_ACTIONS) == 0x1FF
    assert int(constants.V1_PROTOCOL) == 0x3F
    assert int(constants.V2_PROTOCOL) == 0x7F
    assert int(constants.ALL_PROTOCOL) == 0x1FFFFF
    assert int(constants.INTERNAL_FLAGS) == 0x70000000
    assert int(constants.MDS_FLAGS) == 0x30000000
    assert [int(f) for f in constants.Family] == [0x55, 0x4C, 0x34, 0x36]


def test_macro_stage_letters() -> None:
    letters = {int(k): chr(v) for k, v in constants.STAGE_LETTER.items()}
    assert letters == {0: "C", 1: "H", 2: "M", 3: "R", 4: "T", 5: "E", 6: "N"}
