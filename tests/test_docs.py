"""The README and docs/: every command they show exists with the options they give it, and
every link they make leads to a file of the repository."""

import argparse
import re
from pathlib import Path

import pytest

from issp.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m (issp|benchmarks\.\w+)((?:\s+[^\s`|]+)*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def commands(text: str) -> list[tuple[str, list[str]]]:
    """``(module, words)`` of each ``python -m ...`` the text shows, a shell line joined
    with its ``\\`` continuations, up to a comment or the end of inline code."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.split("  #")[0]
        found += [(m.group(1), m.group(2).split()) for m in COMMAND.finditer(line)]
    return found


def subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``words`` name, as deep as they go."""
    for word in words:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            break
        parser = actions[0].choices[word]
    return parser


def test_docs_exist_and_the_readme_is_a_front_door():
    assert len(DOCS) >= 6
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_command_a_doc_shows_exists_with_its_options(doc):
    parser = build_parser()
    shown = commands(doc.read_text())
    for module, words in shown:
        if module != "issp":
            name = module.split(".", 1)[1]
            assert (ROOT / "benchmarks" / f"{name}.py").is_file(), f"{doc.name}: {module}"
            continue
        if not words or words[0].startswith("<"):  # the CLI named, or a placeholder
            continue
        command = subparser(parser, words)
        assert command.prog != parser.prog, f"{doc.name}: `issp {words[0]}` is no command"
        known = {option for action in command._actions for option in action.option_strings}
        for word in words:
            option = word.split("=")[0]
            if option.startswith("--"):
                assert option in known, f"{doc.name}: {command.prog} has no {option}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_link_a_doc_makes_resolves(doc):
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists() and path.is_relative_to(ROOT), f"{doc.name}: {target}"
