"""Where the count goes in a prompt: one documented rule for free-form prompts.

Rule: the count is written in digits directly before the object's noun phrase. The noun phrase is the
object word plus the words right before it up to a function word ("a photo of | red circles"). A number,
an article ("a red circle") or a vague quantifier ("some", "many", "several") there is replaced by the
count, and the object word takes the count's number ("1 red circle", "7 red circles"). If the object
word is not in the prompt, the prompt is left as it is and " ({count} {objects})" is appended.
"""

from __future__ import annotations

import re

from .errors import InvalidRequest

FUNCTION_WORDS = {"a", "an", "the", "of", "on", "in", "with", "and", "at", "by", "for", "to", "under", "over", "near"}
QUANTIFIERS = {"some", "many", "several", "few", "multiple"}
_NUMBER = re.compile(r"^\d+$")


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
        if cls.lower() in singular_candidates(re.sub(r"[^\w-]", "", word)):
            return i
    return None


def with_count(prompt: str, cls: str, count: int) -> str:
    words = prompt.split()
    i = find_object(words, cls)
    if i is None:
        return f"{prompt} ({count} {cls if count == 1 else plural(cls)})"
    start = i
    while start > 0 and words[start - 1].lower() not in FUNCTION_WORDS:
        start -= 1
    if start > 0 and words[start - 1].lower() in ("a", "an"):  # "a red circle" -> "1 red circle"
        start -= 1
    phrase = [w for w in words[start:i] if not _NUMBER.match(w) and w.lower() not in {"a", "an"} | QUANTIFIERS]
    noun = _agree(words[i], cls, count)
    return " ".join(words[:start] + [str(count)] + phrase + [noun] + words[i + 1:])


def _agree(word: str, cls: str, count: int) -> str:
    """The object word in the number the count asks for ("1 circles" -> "1 circle", "7 circle" -> "7 circles")."""
    core = re.sub(r"[^\w-]", "", word)
    tail = word[len(core):] if word.startswith(core) else ""
    if count == 1 and core.lower() != cls.lower():
        return cls + tail
    if count > 1 and core.lower() == cls.lower():
        return plural(cls) + tail
    return word


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
        raise InvalidRequest(f"the prompt names {what}; pass the object explicitly. Known objects: {', '.join(classes)}")
    return found[0]
