"""A strict parser of the Prometheus text exposition format (version 0.0.4),
for the console's ``/metrics`` tests: written from the format's description,
so the test does not trust the code it checks.

Refuses what Prometheus would refuse: bad metric or label names, unescaped
or unknown escapes in label values, a TYPE line after the family's samples
or given twice, a family's samples split apart, a series given twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ExpositionError(ValueError):
    pass


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    name: str
    help: str | None = None
    type: str = "untyped"
    samples: list[Sample] = field(default_factory=list)


def _unescape_help(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "\\n":
            out.append("\\" if text[i + 1] == "\\" else "\n")
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _labels(text: str, line: str) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y"}`` at the start of ``text``; the labels and the
    length consumed."""
    labels: dict[str, str] = {}
    i = 1
    while True:
        if text[i : i + 1] == "}":
            return labels, i + 1
        name = _LABEL_NAME.match(text, i)
        if name is None:
            raise ExpositionError(f"bad label name in {line!r}")
        i = name.end()
        if text[i : i + 2] != '="':
            raise ExpositionError(f"label {name.group()} is not followed by =\" in {line!r}")
        i += 2
        value = []
        while True:
            if i >= len(text):
                raise ExpositionError(f"unterminated label value in {line!r}")
            char = text[i]
            if char == "\\":
                escaped = text[i + 1 : i + 2]
                if escaped not in ('\\', '"', "n"):
                    raise ExpositionError(f"unknown escape \\{escaped} in {line!r}")
                value.append("\n" if escaped == "n" else escaped)
                i += 2
            elif char == '"':
                i += 1
                break
            elif char == "\n":
                raise ExpositionError(f"raw line feed in a label value in {line!r}")
            else:
                value.append(char)
                i += 1
        if name.group() in labels:
            raise ExpositionError(f"label {name.group()} given twice in {line!r}")
        labels[name.group()] = "".join(value)
        if text[i : i + 1] == ",":
            i += 1
        elif text[i : i + 1] != "}":
            raise ExpositionError(f"expected , or }} after a label in {line!r}")


def _value(text: str, line: str) -> float:
    special = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf, "Inf": math.inf}
    if text in special:
        return special[text]
    try:
        return float(text)
    except ValueError:
        raise ExpositionError(f"bad sample value {text!r} in {line!r}") from None


def parse_exposition(text: str) -> dict[str, Family]:
    if text and not text.endswith("\n"):
        raise ExpositionError("the exposition must end with a line feed")
    families: dict[str, Family] = {}
    finished: set[str] = set()  # families whose samples are over
    current: str | None = None
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text.split("\n"):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not _NAME.fullmatch(name):
                    raise ExpositionError(f"bad metric name in {line!r}")
                family = families.setdefault(name, Family(name))
                if family.samples or name in finished:
                    raise ExpositionError(f"{parts[1]} after the samples of {name}")
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    if family.help is not None:
                        raise ExpositionError(f"HELP given twice for {name}")
                    family.help = _unescape_help(rest)
                else:
                    if rest not in _TYPES:
                        raise ExpositionError(f"unknown type {rest!r} for {name}")
                    if family.type != "untyped" or getattr(family, "_typed", False):
                        raise ExpositionError(f"TYPE given twice for {name}")
                    family.type = rest
                    family._typed = True  # type: ignore[attr-defined]
            continue
        name_match = _NAME.match(line)
        if name_match is None:
            raise ExpositionError(f"a sample line must start with a metric name: {line!r}")
        name = name_match.group()
        rest = line[name_match.end() :]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            labels, used = _labels(rest, line)
            rest = rest[used:]
        if not rest.startswith(" "):
            raise ExpositionError(f"no space before the value in {line!r}")
        fields = rest.split()
        if not 1 <= len(fields) <= 2:
            raise ExpositionError(f"expected a value and an optional timestamp in {line!r}")
        value = _value(fields[0], line)
        if len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1]):
            raise ExpositionError(f"bad timestamp in {line!r}")
        if current is not None and current != name:
            finished.add(current)
        if name in finished:
            raise ExpositionError(f"the samples of {name} are not together")
        current = name
        key = (name, tuple(sorted(labels.items())))
        if key in series:
            raise ExpositionError(f"series given twice: {line!r}")
        series.add(key)
        families.setdefault(name, Family(name)).samples.append(Sample(name, labels, value))
    return families
