"""Fictional facts: seeded, made-up words kept out of the corpus, the tokenizer check, the
facts as a text dataset."""

from __future__ import annotations

import pytest

from backlm.data import facts as F
from backlm.errors import UserError
from tests.conftest import make_docs


def test_the_same_seed_makes_the_same_facts_and_another_seed_others():
    a, b = F.generate(30, 10, seed=3), F.generate(30, 10, seed=3)
    assert a == b and a.sha256() == b.sha256() and a.name() == b.name()
    assert F.generate(30, 10, seed=4).facts != a.facts
    assert len(a.facts) == 30 and len(a.controls) == 10


def test_every_made_up_word_is_used_once_and_avoids_the_corpus():
    corpus = F.corpus_words(make_docs(200))
    made = F.generate(40, 20, seed=1, avoid=corpus)
    words = [w.lower() for f in (*made.facts, *made.controls)
             for w in (f.first, f.last, *f.title.split())]
    assert len(words) == len(set(words))
    assert not set(words) & corpus
    # a word the generator would pick is refused once the corpus holds it
    first = F.generate(1, 1, seed=1).facts[0].first.lower()
    assert F.generate(1, 1, seed=1, avoid={first}).facts[0].first.lower() != first


def test_phrasings_and_their_pieces():
    fact = F.Fact("Zora", "Quillin", "composer", "Velm Tharo")
    assert fact.statement() == "Zora Quillin is the composer of Velm Tharo."
    assert fact.reversed_statement() == "The composer of Velm Tharo is Zora Quillin."
    assert "".join(F.pieces(fact, "statement")) == fact.statement()
    assert "".join(F.pieces(fact, "reversed")) == fact.reversed_statement()


class MergingTokenizer:
    """Encodes the sentence's ending as one token: pieces alone differ from the whole."""

    def encode(self, text):
        return [len(text)] if text.endswith(".") else [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_a_tokenizer_that_merges_across_entities_is_refused_in_one_line(byte_tok):
    fact_set = F.generate(3, 3, seed=0)
    F.check_tokenizer(fact_set, byte_tok, 200)  # bytes: pieces tokenize as the whole
    with pytest.raises(UserError, match="cannot be generated for this tokenizer") as err:
        F.check_tokenizer(fact_set, MergingTokenizer(), 200)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="tokens, the model reads 5"):
        F.check_tokenizer(fact_set, byte_tok, 5)


@pytest.mark.parametrize(("facts", "controls", "flag"), [(0, 5, "--facts"), (5, 0, "--controls"),
                                                         (F.MAX_FACTS + 1, 5, "--facts")])
def test_bad_counts_are_refused(facts, controls, flag):
    with pytest.raises(UserError, match=flag):
        F.generate(facts, controls)


def test_pools_too_small_for_the_count_are_refused(monkeypatch):
    monkeypatch.setattr(F, "_word", lambda rng, syllables: "Zora")  # a pool of one word
    with pytest.raises(UserError, match="fewer --facts"):
        F.generate(2, 2, seed=0)


def test_distractors_are_other_facts_and_k_is_checked():
    picks = F.distractors(8, 4, seed=2)
    assert all(len(p) == 3 and i not in p and len(set(p)) == 3 for i, p in enumerate(picks))
    assert picks == F.distractors(8, 4, seed=2)
    for k in (1, 9):
        with pytest.raises(UserError, match="--k"):
            F.distractors(8, k, seed=2)


def test_the_facts_dataset_is_a_text_dataset_that_records_its_facts(tmp_path):
    from backlm.data.shards import dataset_kind, iter_texts, list_shards

    fact_set = F.generate(6, 4, seed=5)
    folder = tmp_path / fact_set.name()
    assert F.write_dataset(folder, fact_set) is True
    assert F.write_dataset(folder, fact_set) is False  # the same facts: nothing to do
    assert dataset_kind(folder) == "text"
    assert list(iter_texts(list_shards(folder, "train")[0])) == [
        f.statement() for f in fact_set.facts]
    assert list(iter_texts(list_shards(folder, "val")[0])) == [
        f.statement() for f in fact_set.controls]
    assert F.read_dataset(folder) == fact_set
    assert F.read_dataset(tmp_path) is None
    with pytest.raises(UserError, match="holds other facts"):
        F.write_dataset(folder, F.generate(6, 4, seed=6))
