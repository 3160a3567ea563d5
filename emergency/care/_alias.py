"""Temporary patient identities that can be read aloud over a radio: "Amber Falcon 27".

The alias is a bijection of the encounter id, so two encounters never share one, and it is spread so that
consecutive encounters (two patients from one incident) differ in their first word.
"""

from __future__ import annotations

# Words chosen to be distinct when spoken and spelled, in English and for non-native speakers.
_FIRST = (
    "Amber", "Azure", "Bronze", "Cedar", "Coral", "Crimson", "Golden", "Granite", "Hazel", "Indigo", "Ivory", "Jade",
    "Lemon", "Maple", "Marble", "Olive", "Onyx", "Orange", "Pearl", "Plum", "Quartz", "Ruby", "Sable", "Saffron",
    "Scarlet", "Silver", "Slate", "Teal", "Topaz", "Violet", "Walnut", "Willow",
)  # fmt: skip
_SECOND = (
    "Badger", "Bison", "Condor", "Dolphin", "Eagle", "Falcon", "Fox", "Gazelle", "Heron", "Ibis", "Jaguar", "Kestrel",
    "Koala", "Lynx", "Marten", "Moose", "Narwhal", "Ocelot", "Osprey", "Otter", "Panda", "Pelican", "Puffin", "Raven",
    "Salmon", "Seal", "Stork", "Tiger", "Toucan", "Walrus", "Wolf", "Zebra",
)  # fmt: skip
_NUMBERS = 90  # 10..99: always two syllables or more, never confusable with a single digit
_CYCLE = len(_FIRST) * len(_SECOND) * _NUMBERS
_STRIDE = 48_271  # coprime with the cycle: consecutive ids land far apart


def alias_for(encounter_id: int) -> str:
    """The alias of an encounter; distinct for distinct ids (a cycle suffix is added after 92,160 encounters)."""
    cycle, index = divmod(encounter_id, _CYCLE)
    spread = (index * _STRIDE) % _CYCLE
    first, rest = divmod(spread, len(_SECOND) * _NUMBERS)
    second, number = divmod(rest, _NUMBERS)
    alias = f"{_FIRST[first]} {_SECOND[second]} {number + 10}"
    return alias if cycle == 0 else f"{alias}-{cycle}"
