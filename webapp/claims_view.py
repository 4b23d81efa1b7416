"""The Results tab's first page: study v2's verdict on each of the paper's claims.

Read from ``claims.json`` (written by ``python -m issp study claims``) beside the study's
``study.json``: one row per claim with the paper's words, the verdict in words and how
complete it is, the report's notes (what a pending claim waits for, runs left out), how
many of the study's planned runs have finished, and each claim's per-cell evidence for an
expandable panel. The figures are the report's,
shown as stored; a missing or damaged file says so instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

CLAIMS_JSON = "claims.json"  # beside study.json
NO_CLAIMS = (
    "*Study v2 has not reported yet: its protocol is `analysis/claims-protocol.md`, and "
    "`python -m issp study claims` trains it and writes the verdicts.*"
)


@dataclass(frozen=True)
class ClaimsPage:
    """The claims table as Markdown, and each claim's evidence by claim."""

    text: str
    evidence: dict[str, list] = field(default_factory=dict)


def claims_page(study_json: Path | None) -> ClaimsPage:
    """The claims beside ``study_json``, or a line saying why there are none."""
    path = None if study_json is None else Path(study_json).parent / CLAIMS_JSON
    if path is None or not path.is_file():
        return ClaimsPage(NO_CLAIMS)
    try:
        report = json.loads(path.read_text())
        rows, remarks = report["claims"], report.get("notes", [])
        lines = [
            f"| {row['claim']} | {row['words']} | **{row['verdict']}** | {row['status']} "
            f"| {row['figure']} |"
            for row in rows
        ]
        evidence = {row["claim"]: row["evidence"] for row in rows}
        notes = ["", *(f"- {remark}" for remark in remarks)] if remarks else []
        if "planned" in report:  # how far the study is: the grid's choices so far
            notes += [
                "",
                f"{int(report['runs'])} study runs finished, of the {int(report['planned'])} "
                "that the grid's choices so far call for.",
            ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return ClaimsPage(f"*The claims file {path.name} cannot be read ({type(err).__name__}).*")
    header = [
        "### The paper's claims, each by the test registered before study v2's runs",
        "",
        "| claim | the paper says | verdict | status | figure (ISS-P minus the other, 95% "
        "interval) |",
        "|---|---|---|---|---|",
    ]
    return ClaimsPage("\n".join(header + lines + notes), evidence)
