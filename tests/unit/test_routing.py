"""Topic patterns: `*` is exactly one word, `#` zero or more (RabbitMQ rules, every broker)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventbus.routing import matches, validate_pattern

words = st.text(alphabet="abcxyz0_-", min_size=1, max_size=4)
types = st.lists(words, min_size=1, max_size=6)


def reference(pattern: list[str], words_: list[str]) -> bool:
    """An independent, obviously-correct (exponential) matcher."""
    if not pattern:
        return not words_
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(reference(rest, words_[i:]) for i in range(len(words_) + 1))
    if not words_:
        return False
    return (head == "*" or head == words_[0]) and reference(rest, words_[1:])


pattern_words = st.lists(st.one_of(words, st.just("*"), st.just("#")), min_size=1, max_size=6)


@given(pattern_words, types)
def test_matches_agrees_with_reference(pattern: list[str], words_: list[str]) -> None:
    assert matches(".".join(pattern), ".".join(words_)) == reference(pattern, words_)


@given(types)
def test_type_matches_itself_and_hash(words_: list[str]) -> None:
    event_type = ".".join(words_)
    assert matches(event_type, event_type)
    assert matches("#", event_type)


@given(types, st.data())
def test_star_replaces_exactly_one_word(words_: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(words_) - 1))
    pattern = [*words_[:i], "*", *words_[i + 1 :]]
    assert matches(".".join(pattern), ".".join(words_))
    # one word more or fewer never matches a pattern without '#'
    assert not matches(".".join(pattern), ".".join([*words_, "extra"]))
    if len(words_) > 1:
        assert not matches(".".join(pattern), ".".join(words_[:i] + words_[i + 1 :]))


@given(types, st.data())
def test_hash_absorbs_any_run_of_words(words_: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(words_)))
    j = data.draw(st.integers(i, len(words_)))
    pattern = [*words_[:i], "#", *words_[j:]]
    assert matches(".".join(pattern), ".".join(words_))


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("order.*", "order.created", True),
        ("order.*", "order", False),
        ("order.*", "order.note.added", False),
        ("order.#", "order", True),
        ("order.#", "order.note.added", True),
        ("order.#", "orders.created", False),
        ("#.added", "order.note.added", True),
        ("*.created", "order.created", True),
        ("*.created", "created", False),
        ("order.#.added", "order.added", True),
    ],
)
def test_examples(pattern: str, event_type: str, expected: bool) -> None:
    assert matches(pattern, event_type) is expected


@pytest.mark.parametrize("bad", ["", "order..created", "order.cre ated", "order.*x", "a.b#"])
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_pattern(bad)
