"""Say which headers you want; get the index-correct CHGHEADER/INSHEADER/ADDHEADER calls.

Header edits in the milter protocol are positional and easy to get wrong:
CHGHEADER counts occurrences of one name (1-based, case-insensitive, the
MTA's own ``Received:`` not counted), deleting shifts the later occurrences
in Postfix but not in Sendmail, and INSHEADER counts every header *including*
the MTA's ``Received:`` at the top (PROTOCOL.md section 10). A milter that
wants "these headers, in this order" gets the calls from
:func:`plan_header_edits` (or :meth:`milterkit.Milter.rewrite_headers`):

1. value changes of headers that stay in place (no index moves);
2. deletions, highest occurrence first within each name (so neither MTA's
   index rule matters);
3. insertions in the order of the wanted list, each at its final position,
   or appended with ADDHEADER at the end.

Headers kept unchanged are found by a longest common subsequence, so the
plan touches only what differs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HeaderEdit", "plan_header_edits"]

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """One call: ``kind`` is ``change``, ``delete``, ``insert`` or ``add``.

    ``index`` is the occurrence (change/delete) or the INSHEADER position
    (insert); ``add`` has none.
    """

    kind: str
    name: str
    value: str = ""
    index: int = 0


def plan_header_edits(
    current: Sequence[Header], wanted: Sequence[Header], *, mta_received: bool = True
) -> list[HeaderEdit]:
    """The edits that turn ``current`` (as the milter saw them) into ``wanted``.

    ``mta_received``: the MTA puts its own ``Received:`` above the headers
    the milter sees, and counts it in INSHEADER positions (Postfix and
    Sendmail both do). Sendmail's insert positions also count headers no
    filter sees, so there exact middle positions are best effort; appends
    and the other edits are exact on both.
    """
    kept = _common_subsequence(current, wanted)
    changes, deleted, inserted = _pair_changes(current, wanted, kept)
    edits = [
        HeaderEdit("change", current[i][0], wanted[j][1], _occurrence(current, i))
        for i, j in changes
    ]
    edits += _deletions(current, deleted)
    edits += _insertions(wanted, inserted, mta_received)
    return edits


def _common_subsequence(
    current: Sequence[Header], wanted: Sequence[Header]
) -> list[tuple[int, int]]:
    """Index pairs of the longest run of identical headers kept in the same order."""
    n, m = len(current), len(wanted)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = table[i], table[i + 1]
        for j in range(m - 1, -1, -1):
            if tuple(current[i]) == tuple(wanted[j]):
                row[j] = below[j + 1] + 1
            else:
                row[j] = max(below[j], row[j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if tuple(current[i]) == tuple(wanted[j]):
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _pair_changes(
    current: Sequence[Header], wanted: Sequence[Header], kept: list[tuple[int, int]]
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Within each gap between kept headers, same-name old/new pairs (in order) become
    changes; the other old headers are deleted and the other new ones inserted."""
    changes: list[tuple[int, int]] = []
    deleted: list[int] = []
    inserted: list[int] = []
    bounds = [(-1, -1), *kept, (len(current), len(wanted))]
    for (i0, j0), (i1, j1) in itertools.pairwise(bounds):
        olds, news = list(range(i0 + 1, i1)), range(j0 + 1, j1)
        start = 0
        for new in news:
            match = _next_named(current, olds, start, wanted[new][0])
            if match is None:
                inserted.append(new)
                continue
            deleted += olds[start:match]
            changes.append((olds[match], new))
            start = match + 1
        deleted += olds[start:]
    return changes, deleted, inserted


def _next_named(current: Sequence[Header], olds: list[int], start: int, name: str) -> int | None:
    """The first old header from ``start`` on with exactly ``name`` (pairs stay in order)."""
    for index in range(start, len(olds)):
        if current[olds[index]][0] == name:
            return index
    return None


def _occurrence(headers: Sequence[Header], position: int) -> int:
    """1-based occurrence of the header at ``position`` among those of its name."""
    name = headers[position][0].lower()
    return sum(1 for h in headers[: position + 1] if h[0].lower() == name)


def _deletions(current: Sequence[Header], deleted: list[int]) -> list[HeaderEdit]:
    """Highest occurrence first, so an MTA that shifts later indexes is not misled."""
    edits = [HeaderEdit("delete", current[i][0], "", _occurrence(current, i)) for i in deleted]
    return sorted(edits, key=lambda e: (e.name.lower(), -e.index))


def _insertions(
    wanted: Sequence[Header], inserted: list[int], mta_received: bool
) -> list[HeaderEdit]:
    """In wanted order: by then every earlier wanted header is in place."""
    edits = []
    last = len(wanted) - 1
    for j in inserted:
        name, value = wanted[j]
        appended = all(k in inserted for k in range(j, last + 1))
        if appended:
            edits.append(HeaderEdit("add", name, value))
        else:
            edits.append(HeaderEdit("insert", name, value, j + int(mta_received)))
    return edits
