"""Where the count goes in a prompt: one documented rule for free-form prompts.

Rule: the count is written once, in digits, directly before the object's noun phrase, and the object word
takes the count's number ("1 red circle", "7 red circles"). The noun phrase is the object word plus the
adjectives right before it; a count the prompt already states is replaced, every other word is kept as
written. Phrasings handled (with count 7, object circle):

- none stated: "a photo of red circles" -> "a photo of 7 red circles"; "I want circles" -> "I want 7 circles"
- digits or number words (zero ... ninety-nine): "two red circles", "I want 6 red circles please"
- articles and vague amounts: "a red circle", "some", "many", "several", "a few", "a single", "lots of"
- grouped amounts: "a dozen", "a pair of", "a couple of"
- count modifiers stay in front of the count: "exactly five red circles" -> "exactly 7 red circles"
  (also "precisely", "only", "just")
- "there is / there are" agrees with the count: "there is a circle" -> "there are 7 circles"
- counts after the noun are moved before it: "circles: 5", "circles (5)", "circles, 5 of them"
- adjective lists joined by "and", "or" or commas, when both sides are known adjectives (colours, sizes):
  "two red and blue circles" -> "7 red and blue circles"

Adjectives are recognised by elimination: the walk left from the object word stops at a boundary word
(article, preposition, pronoun, a common verb such as "want" or "show", "there", "exactly" ...), at
punctuation, or at a stated count. A verb outside that list ("photograph circles") is taken for an
adjective; write "a photograph of circles" instead. If the object word is not in the prompt, the prompt is
left as it is and " ({count} {objects})" is appended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import InvalidRequest

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = frozenset(_UNITS + _TENS + [f"{t}-{u}" for t in _TENS for u in _UNITS[1:10]])
QUANTIFIERS = frozenset({"some", "many", "several", "few", "multiple", "numerous", "various"})
COUNT_MODIFIERS = frozenset({"exactly", "precisely", "only", "just"})
# Words a stated count may consist of; "#" stands for a number (digits or a number word). Longest first.
COUNT_PHRASES: tuple[tuple[str, ...], ...] = (
    ("a", "pair", "of"), ("a", "couple", "of"), ("a", "lot", "of"), ("a", "number", "of"),
    ("a", "dozen"), ("#", "dozen"), ("a", "few"), ("a", "single"), ("lots", "of"), ("dozens", "of"), ("pair", "of"),
    ("couple", "of"), ("dozen",), ("#",), ("a",), ("an",), *((q,) for q in sorted(QUANTIFIERS)),
)
COUNT_WORDS = QUANTIFIERS | {"dozen", "dozens", "single", "pair", "couple", "lots"}
# Words that end the noun phrase on its left: they are never adjectives.
BOUNDARY_WORDS = frozenset("""
    a an the this that these those my your our their his her its of on in with without and or but at by for to
    from into onto inside outside under over near beside behind above below around between across along against
    among within as like than i we you me us it they them he she there here is are be was were has have having
    want wants need needs would should could can please show shows showing draw drawing paint render generate
    make create give see contain contains containing depict depicts depicting feature features featuring get
    put place arrange arranged about approximately
""".split()) | COUNT_MODIFIERS
# Adjectives an adjective list may join with "and", "or" or a comma ("red and blue circles").
KNOWN_ADJECTIVES = frozenset("""
    red green blue yellow orange purple pink black white gray grey brown gold golden silver small large big tiny
    huge little bright dark light pale shiny matte wooden metal plastic glass round flat
""".split())
_NUMBER = re.compile(r"^\d+$")
_WORD = re.compile(r"^(\W*)(.*?)(\W*)$")


@dataclass(frozen=True)
class Word:
    """One whitespace-separated word of a prompt: punctuation before it, the word, punctuation after it."""

    lead: str
    core: str
    tail: str

    @classmethod
    def parse(cls, text: str) -> "Word":
        lead, core, tail = _WORD.match(text).groups()
        return cls(lead, core, tail)

    @property
    def key(self) -> str:
        return self.core.lower()

    @property
    def is_number(self) -> bool:
        return bool(_NUMBER.match(self.core)) or self.key in NUMBER_WORDS

    def __str__(self) -> str:
        return self.lead + self.core + self.tail


def words_of(prompt: str) -> list[Word]:
    return [Word.parse(w) for w in prompt.split()]


def singular_candidates(word: str) -> list[str]:
    """English plural -> singular guesses, most specific first ("crosses" -> "cross", "berries" -> "berry")."""
    w = word.strip().lower()
    out = [w]
    if w.endswith("ies") and len(w) > 3:
        out.append(w[:-3] + "y")
    if w.endswith("es") and len(w) > 2:
        out.append(w[:-2])
    if w.endswith("s") and len(w) > 1:
        out.append(w[:-1])
    return out


def resolve_class(name: str, classes: list[str]) -> str:
    """Map an object name (singular or plural, any case) to one of ``classes``; unknown names list the known ones."""
    known = {c.lower(): c for c in classes}
    for candidate in singular_candidates(name):
        if candidate in known:
            return known[candidate]
    raise InvalidRequest(f"unknown object {name!r}; known objects: {', '.join(sorted(classes))}")


def find_object(words: list[str], cls: str) -> int | None:
    """Index of the first word that names ``cls`` (singular or plural), or None."""
    for i, word in enumerate(words):
        if cls.lower() in singular_candidates(Word.parse(word).core):
            return i
    return None


def with_count(prompt: str, cls: str, count: int | str) -> str:
    """``prompt`` with ``count`` written before the noun phrase of ``cls`` (the rule in the module doc). A
    quantity word for ``count`` ("many") takes the plural and drops the count modifiers ("exactly")."""
    words = words_of(prompt)
    i = find_object([str(w) for w in words], cls)
    number = count if isinstance(count, int) else 2
    if i is None:
        return f"{prompt} ({count} {cls if number == 1 else plural(cls)})"
    noun = _agree(words[i], cls, number)
    after = _count_after(words, i)
    if after:  # "circles: 5, on a table" -> "circles, on a table"
        noun = replace(noun, tail=noun.tail.rstrip(":,") + words[i + after].tail.lstrip(")"))
    start = _phrase_start(words, i)
    stated = _count_before(words, start)
    phrase = words[start:i] + [noun]
    if stated and words[start - stated].lead:  # "(five red circles)" -> "7 (red circles)": the count stays one word
        phrase[0] = replace(phrase[0], lead=words[start - stated].lead + phrase[0].lead)
    before = _there_agrees(words[:start - stated], number)
    while not isinstance(count, int) and before and before[-1].key in COUNT_MODIFIERS and not before[-1].tail:
        before = before[:-1]
    out = before + [Word("", str(count), "")] + phrase + words[i + 1 + after:]
    return " ".join(str(w) for w in out)


def _may_be_adjective(word: Word) -> bool:
    return bool(word.core) and not word.is_number and word.key not in BOUNDARY_WORDS | COUNT_WORDS


def _phrase_start(words: list[Word], noun: int) -> int:
    """Index of the first adjective of the noun phrase (the noun's own index when there is none)."""
    s = noun
    while s > 0 and not words[s].lead:
        prev = words[s - 1]
        if _may_be_adjective(prev) and not prev.tail:
            s -= 1
        elif s < noun and words[s].key in KNOWN_ADJECTIVES and prev.key in KNOWN_ADJECTIVES and prev.tail == ",":
            s -= 1  # "red, blue circles"
        elif (s < noun and s >= 2 and words[s].key in KNOWN_ADJECTIVES and prev.key in ("and", "or")
              and not prev.tail and not prev.lead and words[s - 2].key in KNOWN_ADJECTIVES
              and words[s - 2].tail in ("", ",")):
            s -= 2  # "red and blue circles"
        else:
            break
    return s


def _count_before(words: list[Word], start: int) -> int:
    """How many words right before ``start`` state a count ("five", "a dozen", "a pair of"); 0 when none do."""
    for phrase in COUNT_PHRASES:
        n = len(phrase)
        if start < n:
            continue
        span = words[start - n:start]
        if all(w.is_number if p == "#" else w.key == p for w, p in zip(span, phrase)) \
                and not any(w.tail for w in span) and not any(w.lead for w in span[1:]):
            return n
    return 0


def _count_after(words: list[Word], noun: int) -> int:
    """How many words right after the noun state its count ("circles: 5", "circles (5)", "circles, 5 of them")."""
    if noun + 1 >= len(words) or not words[noun + 1].is_number:
        return 0
    number, tail = words[noun + 1], words[noun].tail
    of_them = [w.key for w in words[noun + 2:noun + 4]] == ["of", "them"] and not number.tail \
        and not words[noun + 2].tail and not words[noun + 3].lead
    if number.lead == "" and tail in ("", ",") and of_them:
        return 3
    if number.lead == "(" and number.tail.startswith(")") and tail == "":
        return 1
    if number.lead == "" and tail.endswith(":"):
        return 1
    return 0


def _there_agrees(words: list[Word], count: int) -> list[Word]:
    """"there is" / "there are" (maybe followed by "exactly") in the number of the count."""
    k = len(words) - 1
    while k >= 0 and words[k].key in COUNT_MODIFIERS and not words[k].tail:
        k -= 1
    if k < 1 or words[k].key not in ("is", "are") or words[k - 1].key != "there" or words[k].tail:
        return words
    verb = "is" if count == 1 else "are"
    verb = verb.capitalize() if words[k].core[:1].isupper() else verb
    return words[:k] + [replace(words[k], core=verb)] + words[k + 1:]


def _agree(word: Word, cls: str, count: int) -> Word:
    """The object word in the number the count asks for ("1 circles" -> "1 circle", "7 circle" -> "7 circles")."""
    form = cls if count == 1 else plural(cls)
    if word.key == form.lower():
        return word
    return replace(word, core=form.capitalize() if word.core[:1].isupper() else form)


def plural(noun: str) -> str:
    """English plural of a class name, enough for detector vocabularies ("bus" -> "buses", "cup" -> "cups")."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def object_in_prompt(prompt: str, classes: list[str]) -> str:
    """The one known class the prompt names; an error if it names none or several."""
    words = prompt.split()
    found = [c for c in classes if find_object(words, c) is not None]
    if len(found) != 1:
        what = "no known object" if not found else f"several objects ({', '.join(found)})"
        raise InvalidRequest(f"the prompt names {what}; set object to one of {', '.join(classes)}, or name one of "
                             "them in the prompt")
    return found[0]


def words_not_whole(prompt: str, tokenizers) -> list[str]:
    """Words of ``prompt`` that a tokenizer splits into several pieces: the model may not know them.

    CLIP's BPE marks the last piece of each word with ``</w>``, so a word is whole when it is one token
    ending in ``</w>`` ("zebra</w>"); numbers (split into digits) and punctuation are not reported. Tokenizers
    that do not mark word ends this way report nothing. Added tokens (the reference tokenizer's numbers 10..20)
    are whole words without the mark.
    """
    out: list[str] = []
    for tokenizer in tokenizers:
        added = tokenizer.get_added_vocab()
        pieces: list[str] = []
        for token in tokenizer.tokenize(prompt):
            if token in added:
                pieces = []
                continue
            pieces.append(token)
            if not token.endswith("</w>"):
                continue
            word = tokenizer.decode(tokenizer.convert_tokens_to_ids(pieces)).strip()
            if len(pieces) > 1 and any(c.isalpha() for c in word) and word not in out:
                out.append(word)
            pieces = []
    return out


def tokenizer_warnings(prompt: str, tokenizers) -> list[str]:
    """The job record's warnings about ``prompt`` for a model with these tokenizers (empty when none apply)."""
    split = words_not_whole(prompt, tokenizers)
    if not split:
        return []
    return [f"the model's tokenizer cannot encode {', '.join(repr(w) for w in split)} whole; the model may not "
            "know these words, so the images may ignore them"]
