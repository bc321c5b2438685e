"""Every input of tests/fuzz/corpus/ (the fuzzers' seeds, and each crash a fuzzer found, kept
as a regression) through its harness (tests/fuzz/harnesses.py), without atheris: the parsers
keep their contracts on them. `make fuzz` (tests/fuzz/run.py) searches for new ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))
from harnesses import HARNESSES  # noqa: E402

INPUTS = sorted((FUZZ / "corpus").glob("*/*"))


def test_every_harness_has_seeds_and_every_seed_a_harness():
    folders = {path.parent.name for path in INPUTS}
    assert folders == set(HARNESSES)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_parser_keeps_its_contract_on_a_kept_input(path):
    HARNESSES[path.parent.name](path.read_bytes())


def test_a_forged_token_would_be_reported():
    """The token harness does check something: a token signed with another key fails it only
    if the parser accepts it; the parser refuses it, so the harness returns."""
    from wsrelay.core.tokens import mint_token
    forged = mint_token("agent.org", keys={"k1": "another key"}, active_key="k1", ttl=300, now=1_800_000_000.0)
    HARNESSES["tokens"](forged.encode())
