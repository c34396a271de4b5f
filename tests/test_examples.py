"""The MiniLM examples give the answers a person would expect."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
demos = pytest.importorskip("minilm_demos")


@pytest.fixture(scope="module")
def loaded():
    return demos.load()


def test_bank_senses_separate(loaded):
    same, different, separated = demos.polysemy(*loaded)
    assert separated and same > different + 0.03, (same, different)


def test_semantic_search_finds_music(loaded):
    top = [s for _, s in demos.search(*loaded, "someone making music", demos.CORPUS, k=2)]
    assert set(top) == {"A man is playing a guitar on stage.", "The orchestra performed a symphony last night."}


def test_summary_keeps_the_transport_plan(loaded):
    summary = demos.summarise(*loaded, demos.DOCUMENT, k=2)
    assert all("coffee" not in s and "dogs" not in s for s in summary)
    assert any("plan" in s for s in summary)
