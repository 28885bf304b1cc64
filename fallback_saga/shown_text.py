"""Stored text as operator surfaces show it (the console, ``show``): cut to
a byte budget, and without the passwords it may quote.

A context, a step's error or its result is whatever a program put in the
journal, megabytes sometimes; a page or a terminal shows a bounded start of
it and says how much more there is. ``redact`` comes first, the cut after:
a cut through a password would leave a part of it that ``redact`` no
longer recognizes.

``redact`` errs on hiding: where a value's end is ambiguous (an unquoted
password may hold a ",", a bracket, a quote) the ambiguous characters are
redacted with it, and a value that does not end within ``_SCAN`` characters
is redacted to the end of the text. It is linear in the text's length
whatever the text: it runs on what a participant's exception says, on the
console's pages and on every failure line the library logs, so each
pattern is bounded or possessive and each value is scanned once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Final

from .secret_names import REDACTED, is_secret_key

__all__ = ["cut_bytes", "may_quote_secret", "redact", "redact_start", "shown_start"]


def cut_bytes(text: str, limit: int) -> tuple[str, int]:
    """The longest start of ``text`` of at most ``limit`` bytes of UTF-8, cut
    between two characters, and how many bytes are left out (0: all of it).
    Cut before any escaping (``esc``, ``visible``), so never inside one."""
    if len(text) * 4 <= limit:  # fits whatever its characters
        return text, 0
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return text, 0
    low, high = 0, min(len(text), limit)  # a character is at least one byte
    while low < high:  # the most characters that fit
        middle = (low + high + 1) // 2
        if len(text[:middle].encode("utf-8", "surrogatepass")) <= limit:
            low = middle
        else:
            high = middle - 1
    head = text[:low]
    return head, size - len(head.encode("utf-8", "surrogatepass"))


# How far the end of a value is looked for: a quote's closing quote, a
# bracket's match, the end of an unquoted run. A value that does not end
# within it (a huge secret, or a text cut inside one) is redacted to the end
# of the text: the start of a text is then redacted as the whole of it is,
# and no tail of a long secret is shown. A private key's block ends within
# _PEM_SCAN (a 8192-bit RSA key is about 6,500 characters).
_SCAN: Final = 4096
_PEM_SCAN: Final = 8192
# A password in a URL's authority (``postgresql://app:...@db``, a Redis
# URL's ``redis://:...@cache``), whatever the scheme: matched from its
# "://", not from the scheme's letters (32 tries per letter of a megabyte of
# them). Every repetition is bounded or possessive: unbounded and
# backtracking, a megabyte error text of letters took minutes (each position
# scanned to the end for "://"), a page's worth of them hours. The password
# runs to the "@", and not across another "://": where none follows, each
# "://" of a megabyte of them scanned the next 1,024 characters again.
_USERINFO: Final = re.compile(r"(://[^:/@\s]{0,256}+:)(?:[^@\s:]|:(?!//)){1,1024}+@")
# Secrets a text quotes without a key, known by their shape: a JWT (the
# base64 of '{"' and a dot), the prefixes of API keys that carry one (Stripe's
# secret and restricted keys and webhook secrets, GitHub's and GitLab's
# tokens, Slack's, OpenAI's and Anthropic's keys, Google's API keys), and an
# ``Authorization`` scheme's credentials quoted without their header. A
# match starts where no word character precedes it: a megabyte of letters
# is one try per word, not one per letter.
_SHAPED: Final = re.compile(
    r"(?<![\w-])(?:"
    r"eyJ[\w-]{8,}+\.[\w.-]*+"
    r"|(?:[sr]k_(?:live|test)_|whsec_|gh[pousr]_|github_pat_|glpat-|xox[abeprs]-)[\w-]{8,}+"
    r"|sk-(?:proj-|ant-)?[\w-]{20,}+"
    r"|AIza[\w-]{30,}+"
    r"|(?P<scheme>(?:Bearer|Basic)\s{1,8}+)(?P<credential>[\w.~+/-]{8,}+=*)"
    r")"
)
# A payment card's number quoted without a key (a participant's "declined
# for card 4111..."): 13 to 19 digits, plain or grouped as printed (4-4-4-4
# by spaces or dashes, or Amex's and Diners' 4-6-5 and 4-6-4), starting
# with an issuer's first digit (2 to 6: a Unix time in milliseconds or
# nanoseconds and a snowflake id start with 1), not inside a longer word
# or number nor a float's digits. A match is a card's only if its check
# digit holds (Luhn, ``_is_card``): 9 in 10 other numbers fail it.
_CARD: Final = re.compile(
    r"(?<![\w.])(?:[2-6][0-9]{12,18}"
    r"|[2-6][0-9]{3}(?P<sep>[ -])[0-9]{4}(?P=sep)[0-9]{4}(?P=sep)[0-9]{1,4}"
    r"|3[0-9]{3}(?P<amex>[ -])[0-9]{6}(?P=amex)[0-9]{4,5})(?!\w|\.[0-9])"
)
# What a card number is shown as: its last four digits, as a receipt shows
# them (PCI DSS allows them), so that a support desk can still tell cards apart.
_CARD_SHOWN: Final = "***{}"
# What tells a credential from a word after "Basic"/"Bearer" ("Basic
# authentication failed", "Bearer token required"): base64's digits or
# symbols, or a capital inside it.
_CREDENTIAL: Final = re.compile(r"[\d+/=]|[a-z][A-Z]")
# An AWS secret access key: 40 characters of base64 with capitals, small
# letters and digits or "/" (a commit's hash is hex), looked for only within
# _AWS_NEAR characters of an access key id (AKIA…, ASIA…), which is shown.
# Near, not anywhere in the text: the start of a text is redacted as the
# whole of it is.
_AWS_KEY_ID: Final = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
_AWS_SECRET: Final = re.compile(
    r"(?<![\w/+=])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])"
    r"(?=[A-Za-z0-9/+]{0,39}[0-9/+])[A-Za-z0-9/+]{40}(?![\w/+=])"
)
_AWS_NEAR: Final = 256
# A private key's PEM block: its body is redacted, its armor lines kept.
_PEM_BEGIN: Final = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END: Final = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
# An XML element named like a secret's: ``<password>...</password>`` (a
# SOAP fault quoting its request). Its text up to its closing tag.
_ELEMENT: Final = re.compile(
    r"<([A-Za-z][\w:.-]{0,63}+)(?P<attributes>\s[^<>]{0,256}+)?>([^<]{1,4096}+)"
)
# A value a text quotes under its key: ``api_key=...`` (a URL's query, a
# conninfo), ``Authorization: Bearer ...`` (a header), ``'card_number':
# '...'`` (a payload's repr or JSON, escaped inside another JSON string:
# ``\\"password\\": ...``; a bytes key ``b'pin'``; a key with spaces
# ``"card number"``), ``--password ...`` (a command line, or its argv's
# repr: ``'--password', '...'``). Which keys are secrets' is for
# ``is_secret_key`` to say, so the key and its separator are found first and
# the value matched only after a secret's key: a value after another key is
# not consumed, and the keys it quotes are found in turn (``url=...?token=``).
# A key starts where no key character precedes it and is matched
# possessively: a megabyte of letters is one try, not one per letter.
_KEY: Final = re.compile(
    r"(?<![\w.-])(?:[bBuU](?=['\"]))?(?P<quote>\\{0,3}[\"'])?(?P<dashes>--?)?"
    r"(?P<name>\w(?(quote)[\w .-]{0,63}+|[\w.-]*+))(?(quote)(?P=quote))"
    # A flag's value follows it after a space, or after ", " in argv's repr.
    r"(?:\s{0,8}+(?P<sep>=>?|:)\s{0,8}+|(?(dashes)(?(quote),\s{0,8}+|\s{1,8}+)|(?!)))"
)
# What may precede the value itself: an auth scheme, a string's prefix
# (``b'...'``), a constructor's name (``SecretStr('...')``, ``<Secret ...>``).
_SCHEME: Final = re.compile(r"(?:bearer|basic|token|digest)\s{1,8}+(?=\S)", re.I)
_PREFIX: Final = re.compile(r"[bBrRuU]{1,2}(?=['\"])|[A-Za-z_][\w.]{0,63}+(?=\()")
_QUOTED: Final = {
    quote: re.compile(rf"{quote}(?:[^{quote}\\]|\\.){{0,{_SCAN}}}+{quote}", re.S)
    for quote in "'\""
}
_TRIPLE: Final = {
    quote: re.compile(rf"{quote * 3}.{{0,{_SCAN}}}?{quote * 3}", re.S) for quote in "'\""
}
# A YAML block scalar (``password: |``): its indented lines.
_BLOCK: Final = re.compile(
    r"[|>][-+]?[1-9]?[ \t]*+(?=\r?\n)(?:\r?\n(?:[ \t]++[^\r\n]*+|[ \t]*+(?=\r?\n)))*+"
)
_ESCAPED_QUOTE: Final = re.compile(r"\\{1,3}['\"]")
# Inside brackets: the brackets, and strings (whose brackets do not count).
_BRACKETED: Final = re.compile(r"""[\[\](){}]|'(?:[^'\\]|\\.)*+'?|"(?:[^"\\]|\\.)*+"?""", re.S)
_ANGLED: Final = re.compile(r"""[<>]|'(?:[^'\\]|\\.)*+'?|"(?:[^"\\]|\\.)*+"?""", re.S)
_CLOSING: Final = {"(": ")", "[": "]", "{": "}", "<": ">"}
_BARE: Final = re.compile(rf"\S{{1,{_SCAN}}}+")
_LINE: Final = re.compile(rf"[^\r\n]{{1,{_SCAN}}}+")
# In an unquoted value, where the next parameter starts: a query's
# ``&next=``, a conninfo's ``;Uid=`` (a value holding one is escaped there).
_NEXT_PARAM: Final = re.compile(r"[&;,][A-Za-z_][\w.-]{0,63}+=")
# A value that cannot hold a "," or ";": a number, None, true.
_SCALAR: Final = re.compile(r"[-+]?[\d.]++(?:[eE][-+]?\d++)?|None|True|False|null|true|false")
# A header whose value is the rest of its line: its credentials may hold
# spaces (``Digest username="...", response="..."``), a cookie header several
# ``name=value`` pairs.
_LINE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie"}
)
# Columns and their values as PostgreSQL's errors quote them: ``Key
# (card_number)=(4111...) already exists``, the detail of a unique or
# foreign-key violation a participant re-raises. The values are redacted
# when any of the columns is named like a secret's.
_COLUMNS: Final = re.compile(r"\(([^()=]{1,512})\)=\(([^()]{0,1024})\)?")
# The programs whose ``-p`` takes a password (``mysql -phunter2``, ``sshpass
# -p hunter2``): a MySQL client's, attached only (with a space, -p prompts
# for the password and the word after it is a database's name: shown), and
# sshpass's, attached or not. Only after one of these on the same line:
# ``-p`` is a port elsewhere (``docker run -p 8080:80``, ``ssh -p 2222``,
# ``psql -p 5432``).
_PASSWORD_P_PROGRAM: Final = re.compile(
    r"(?<![\w.-])(?:(?P<mysql>mysql(?:dump|admin|import|check|show|pump|sh)?"
    r"|mariadb(?:-?dump|-?admin)?)|sshpass)(?:\.exe)?(?![\w.-])"
)
# Its -p flag: ``-p`` then the value, attached or after spaces; in an argv's
# repr ``'-phunter2'`` or ``'-p', 'hunter2'``.
_PASSWORD_P: Final = re.compile(
    r"(?<![\w.-])(?P<quote>['\"])?-p(?(quote)(?:(?P=quote),\s{0,8}+|(?=[^'\"\s]))|\s{0,8}+)(?=\S)"
)
# A MySQL client's: the value attached (``-phunter2``, ``'-phunter2'``; not
# an argv's ``'-p', 'orders'``).
_PASSWORD_P_ATTACHED: Final = re.compile(
    r"(?<![\w.-])(?P<quote>['\"])?-p(?(quote)(?=[^'\"\s])|(?=\S)(?!['\"],))"
)
# How far after its program a -p flag is looked for.
_COMMAND_SCAN: Final = 1024
# A MySQL client's long password flags (``--password2``, ``--password3``: a
# second and third factor), whose value is optional: given only attached
# (``--password=hunter2``); with a space, the flag prompts for it and the
# word after it is the next argument (``mysql --password orders``: the
# database). Not so the other programs' (``docker login --password ...``).
_MYSQL_PASSWORD_FLAGS: Final = frozenset({"password", "password1", "password2", "password3"})
# A plain value in a YAML flow mapping (``{user: bob, password: hunter2}``):
# it may hold spaces and line breaks (a flow mapping may span lines, and a
# plain value be folded over them) and ends at a "," followed by a space or
# a line break, or at "}" (a "," with no space after it stays in it: a
# password may hold one).
_FLOW_VALUE: Final = re.compile(rf"(?:[^,}}]|,(?!\s)){{1,{_SCAN}}}+")
# No redaction looks further ahead than this past where its match starts.
_LONGEST: Final = _PEM_SCAN + 256


# What each of redact's patterns needs somewhere in a text (a key's
# separator, "://", a tag's "<", a shape's prefix, a flag's dash): a text with none
# of them quotes nothing redact would hide. Kept next to the patterns: one
# added there needs its mark here.
_MARKS: Final = re.compile(
    r"<[A-Za-z]|eyJ|k_live_|k_test_|whsec_|gh[pousr]_|github_pat_|glpat-|xox[abeprs]-|sk-|AIza"
    r"|Bearer|Basic|PRIVATE KEY|(?<![\w.])[2-6][0-9]{3}[ -]?[0-9]{4}"
)


def may_quote_secret(text: str) -> bool:
    """Whether ``redact`` may change ``text``: ``False`` for most short
    texts (an id, a name) at the cost of a few scans, not of ``redact``'s."""
    if "=" in text or ":" in text or _MARKS.search(text) is not None:
        return True
    # A flag (``--password``): a dash no key character precedes. Found by
    # ``find``: a lookbehind tried at every character cost more than the
    # rest together.
    at = text.find("-")
    while at >= 0:
        if at == 0 or not (text[at - 1].isalnum() or text[at - 1] in "_.-"):
            return True
        at = text.find("-", at + 1)
    return False


def redact(text: str) -> str:
    """``text`` with the secrets it quotes replaced by ``***``: a password
    in a URL, any value it quotes under a key named like a secret
    (``is_secret_key``), whatever that value is (a string, a number, a
    list, a dict, an object's repr), and the secrets known by their shape
    (a JWT, an API key's prefix, a private key's PEM block, a payment
    card's number: ``***`` and its last four digits)."""
    if "://" in text:
        text = _USERINFO.sub(r"\1***@", text)
    if "PRIVATE KEY" in text:
        text = _redact_pem(text)
    text = _SHAPED.sub(_redact_shaped, text)
    text = _redact_cards(text)
    if "AKIA" in text or "ASIA" in text:
        text = _redact_aws(text)
    if ")=(" in text:
        text = _COLUMNS.sub(_redact_columns, text)
    if "<" in text:
        text = _redact_elements(text)
    # Substring tests first: the programs' pattern, tried at every position,
    # cost a third of redact on a short text holding a port's ``-p``.
    if "-p" in text and ("mysql" in text or "mariadb" in text or "sshpass" in text):
        text = _redact_password_flags(text)
    return _redact_keyed(text)


def _redact_password_flags(text: str) -> str:
    return _spliced(text, _password_flag_values(text))


def _password_flag_values(text: str) -> Iterator[tuple[int, int]]:
    done = 0  # where the text was looked at up to: each character once
    for program in _PASSWORD_P_PROGRAM.finditer(text):
        start = max(program.end(), done)
        line_end = text.find("\n", start, start + _COMMAND_SCAN)
        limit = min(len(text), start + _COMMAND_SCAN) if line_end < 0 else line_end
        # sshpass's first -p only: a command it runs has flags of its own
        # (``sshpass -p ... ssh -p 2222 host``). A MySQL client's attached
        # one: ``-p dbname`` (prompting) may come before it.
        flags = _PASSWORD_P if program["mysql"] is None else _PASSWORD_P_ATTACHED
        flag = flags.search(text, start, limit)
        if flag is not None:
            end = _value_end(text, flag.end(), flag.start())
            if end > flag.end():
                yield flag.end(), end
                if end >= len(text):
                    return
                limit = max(limit, end)
        done = max(done, limit)


def _redact_shaped(found: re.Match[str]) -> str:
    credential = found["credential"]
    if credential is None:
        return REDACTED
    if _CREDENTIAL.search(credential):
        return found["scheme"] + REDACTED
    return found[0]


def _spliced(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each of ``spans`` (in order, none overlapping the one
    before) replaced by ``***``: the one splice the redactions below share."""
    parts: list[str] = []
    done = 0
    for start, end in spans:
        parts += (text[done:start], REDACTED)
        done = end
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _redact_cards(text: str) -> str:
    parts: list[str] = []
    done = 0
    for start, digits in _cards(text):
        parts += (text[done:start[0]], _CARD_SHOWN.format(digits[-4:]))
        done = start[1]
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def _cards(text: str) -> Iterator[tuple[tuple[int, int], str]]:
    """The span and digits of each card number ``text`` quotes (``_CARD``).
    A grouping that is no card's may start a card's digits further on
    (``4242 4111 1111 1111 1111``): the search goes on from the next
    character, not past it — a few characters more at most, per match."""
    at = 0
    while (found := _CARD.search(text, at)) is not None:
        digits = found[0].replace(" ", "").replace("-", "")
        if _is_card(digits):
            yield found.span(), digits
            at = found.end()
        else:
            at = found.start() + 1


def _is_card(digits: str) -> bool:
    """Whether ``digits``' last digit is their Luhn check digit."""
    total = 0
    for place, digit in enumerate(map(int, reversed(digits))):
        if place % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _redact_aws(text: str) -> str:
    secrets: set[tuple[int, int]] = set()
    for key_id in _AWS_KEY_ID.finditer(text):
        # Past the end of the neighbourhood by a key's length: a longer run
        # cut at the end would look like one.
        end = key_id.end() + _AWS_NEAR
        for secret in _AWS_SECRET.finditer(text, max(0, key_id.start() - _AWS_NEAR), end + 41):
            if secret.start() <= end:
                secrets.add(secret.span())
    return _spliced(text, sorted(secrets))


def _redact_pem(text: str) -> str:
    return _spliced(text, _pem_bodies(text))


def _pem_bodies(text: str) -> Iterator[tuple[int, int]]:
    done = 0
    for begin in _PEM_BEGIN.finditer(text):
        if begin.start() < done:
            continue
        end = _PEM_END.search(text, begin.end(), begin.end() + _PEM_SCAN)
        if end is None:  # cut inside it, or no end in sight: all of it
            yield begin.end(), len(text)
            return
        done = end.start()
        yield begin.end(), done


def _redact_elements(text: str) -> str:
    return _spliced(text, _secret_elements(text))


def _secret_elements(text: str) -> Iterator[tuple[int, int]]:
    done = 0
    for found in _ELEMENT.finditer(text):
        if found.start() < done or not _secret_key(found[1]):
            continue
        # An element's text ends at its closing tag, or the text's end (cut
        # inside it). ``<Secret object at 0x7f>`` in a repr is no element:
        # a tag's attributes are name="value".
        attributes = found["attributes"]
        if attributes is not None and "=" not in attributes:
            continue
        if not (text.startswith(f"</{found[1]}", found.end()) or found.end() == len(text)
                or len(found[3]) == _SCAN):
            continue
        done = _ended(text, found.end(), found.start(3))
        yield found.start(3), done
        if done >= len(text):
            return


def _redact_columns(found: re.Match[str]) -> str:
    columns = found[1]
    if any(_secret_key(column.strip().strip('"')) for column in columns.split(",")):
        return f"({columns})={REDACTED}"
    return found[0]


def _redact_keyed(text: str) -> str:
    return _spliced(text, _keyed_values(text))


def _keyed_values(text: str) -> Iterator[tuple[int, int]]:
    done = 0
    for found in _KEY.finditer(text):
        # A match inside a value just redacted is part of that value.
        if found.start() < done:
            continue
        name = found["name"]
        if not _secret_key(name) or (found["dashes"] and _switch_flag(name)):
            continue
        if (found["dashes"] == "--" and found["sep"] is None
                and name.lower() in _MYSQL_PASSWORD_FLAGS
                and _after_mysql_client(text, found.start())):
            continue
        start = found.end()
        if (found["sep"] == ":" and not found["quote"]
                and name.lower().replace("_", "-") in _LINE_HEADERS):
            end = _rest_of_line(text, start)
        elif found["sep"] == ":" and not found["quote"] and _in_flow_mapping(text, found.start()):
            end = _flow_end(text, start, found.start())
        else:
            end = _value_end(text, start, found.start())
        if end > start:
            done = end
            yield start, end
            if done >= len(text):
                return


def _after_mysql_client(text: str, flag_start: int) -> bool:
    """Whether the flag at ``flag_start`` is a MySQL client's: that program
    is the first named in the command it is in (on its line, after any
    ``|``, ``;`` or ``&`` that ended the one before: ``mysqldump ... | gpg
    ...``). Looked for within ``_COMMAND_SCAN``
    characters: further, the flag is taken as another program's (hidden)."""
    start = max(text.rfind("\n", max(0, flag_start - _COMMAND_SCAN), flag_start) + 1,
                flag_start - _COMMAND_SCAN)
    command = text[start:flag_start]
    if "mysql" not in command and "mariadb" not in command:
        return False
    # The last command's start: rfind, at C speed (a megabyte of flags is
    # one bounded look back each).
    begins = max(command.rfind(mark) for mark in "|;&") + 1
    program = _PASSWORD_P_PROGRAM.search(command, begins)
    return program is not None and program["mysql"] is not None


def _in_flow_mapping(text: str, key_start: int) -> bool:
    """Whether a ``key:`` is one of a YAML flow mapping's (``{a: 1, key: ...}``):
    after its "{" or a "," (and spaces or line breaks), inside a "{" not
    closed before it."""
    before = text[max(0, key_start - 256):key_start]
    # Line breaks too: a mapping's keys may each start a line of their own.
    stripped = before.rstrip()
    if not stripped.endswith(("{", ",")):
        return False
    return before.count("{") > before.count("}")


def _flow_end(text: str, start: int, key_start: int) -> int:
    """The end of a value in a YAML flow mapping: a quoted or bracketed one
    as anywhere else, a plain one (spaces and line breaks and all) at a
    "," and a space or line break, or at "}"."""
    if start < len(text) and text[start] in "'\"[{(<|>\\":
        return _value_end(text, start, key_start)
    plain = _FLOW_VALUE.match(text, start)
    if plain is None:
        return start
    end = _ended(text, plain.end(), start)
    if end != plain.end():
        return end
    return start + len(plain[0].rstrip())


def _rest_of_line(text: str, start: int) -> int:
    line = _LINE.match(text, start)
    if line is None:
        return start
    return _ended(text, line.end(), start)


def _ended(text: str, end: int, start: int) -> int:
    """``end``, or the end of the text when the value reached ``_SCAN``
    characters without ending."""
    return len(text) if end - start >= _SCAN and end < len(text) else end


def _value_end(text: str, start: int, key_start: int) -> int:
    """Where the value a secret's key quotes at ``start`` ends (``start``:
    none there)."""
    position = start
    scheme = _SCHEME.match(text, position)
    if scheme is not None:
        position = scheme.end()
    prefix = _PREFIX.match(text, position)
    if prefix is not None:
        position = prefix.end()
    if position >= len(text):
        return position
    first = text[position]
    if first in "|>":
        block = _BLOCK.match(text, position)
        if block is not None:
            return _block_end(text, block, key_start)
    if first in "'\"":
        if text.startswith(first * 3, position):
            triple = _TRIPLE[first].match(text, position)
            return len(text) if triple is None else triple.end()
        quoted = _QUOTED[first].match(text, position)
        return len(text) if quoted is None else quoted.end()
    if first == "\\":
        escaped = _ESCAPED_QUOTE.match(text, position)
        if escaped is not None:
            return _escaped_end(text, escaped.end(), escaped[0])
    if first in _CLOSING:
        return _bracket_end(text, position)
    return _bare_end(text, position, key_start)


def _block_end(text: str, block: re.Match[str], key_start: int) -> int:
    """The end of a YAML block scalar: its lines indented deeper than its
    key's (a sibling key after it is shown)."""
    if block.end() - block.start() > _SCAN:
        return len(text)
    line_start = text.rfind("\n", max(0, key_start - 256), key_start) + 1
    indent = len(text[line_start:key_start]) - len(text[line_start:key_start].lstrip(" \t"))
    position = end = block.start()
    for line in block[0].splitlines(keepends=True):
        deeper = len(line) - len(line.lstrip(" \t")) > indent
        if position > block.start() and line.strip() and not deeper:
            break
        end = position + len(line.rstrip("\r\n"))  # its line break is the sibling's
        position += len(line)
    return end


def _escaped_end(text: str, position: int, quote: str) -> int:
    """The end of a string inside a string (``\\"...\\"``): at the same
    escaped quote, not one escaped once more (``\\\\\\"``)."""
    limit = min(len(text), position + _SCAN)
    while True:
        found = text.find(quote, position, limit)
        if found < 0:
            return len(text)
        if found == 0 or text[found - 1] != "\\":
            return found + len(quote)
        position = found + len(quote)


def _bracket_end(text: str, position: int) -> int:
    """The end of the bracketed value at ``position`` (a list, a dict, a
    tuple, a call's arguments, an object's ``<repr>``)."""
    tokens = _ANGLED if text[position] == "<" else _BRACKETED
    limit = min(len(text), position + _SCAN)
    opened: list[str] = []
    for token in tokens.finditer(text, position, limit):
        mark = token[0]
        if mark in _CLOSING:
            opened.append(_CLOSING[mark])
        elif opened and mark == opened[-1]:
            opened.pop()
            if not opened:
                return token.end()
    return len(text)  # not closed within _SCAN: cut inside it, or huge


def _bare_end(text: str, position: int, key_start: int) -> int:
    """The end of an unquoted value: at the next whitespace, or the next
    ``&key=``; without the brackets and quotes that close what was opened
    before its key (``(password=...)``, ``'...?token=...'``)."""
    run = _BARE.match(text, position)
    if run is None:
        return position
    end = _ended(text, run.end(), position)
    if end != run.end():
        return end
    value = text[position:end]
    following = _NEXT_PARAM.search(value)
    if following is not None:
        return position + following.start()
    # A "," or ";" after a number ends it; after anything else it may be a
    # password's last character: redacted with it.
    body = value.rstrip(",;.:")
    if len(body) < len(value) and _SCALAR.fullmatch(body):
        return position + len(body)
    kept = len(body)
    before = text[max(0, key_start - 256):key_start]
    closed: dict[str, int] = {}
    while kept > 1 and body[kept - 1] in _OPENER_OF:
        mark = body[kept - 1]
        inside = body[: kept - 1]
        opener = _OPENER_OF[mark]
        if opener == mark:  # a quote: open before the key if seen an odd number of times
            if mark in closed or before.count(mark) % 2 == 0 or inside.count(mark) % 2:
                break
        elif (inside.count(opener) > inside.count(mark)
              or before.count(opener) - before.count(mark) <= closed.get(mark, 0)):
            break
        closed[mark] = closed.get(mark, 0) + 1
        kept -= 1
    if kept == len(body):
        return end  # nothing closed: any "," or ";" is the value's
    return position + kept


# A flag named after a secret that takes none: a switch (``--no-password``,
# ``--skip-password``, ``--ask-vault-password``) or where the secret is read
# from (``--password-stdin``; ``--password-file`` is a fact about it, see
# secret_names). Its next word is an argument of its own, shown.
_SWITCH_FIRST: Final = frozenset({"no", "skip", "without", "ask", "prompt", "disable"})
_SWITCH_LAST: Final = frozenset({"stdin"})


def _switch_flag(name: str) -> bool:
    words = re.split(r"[-_.]", name.lower())
    return words[0] in _SWITCH_FIRST or words[-1] in _SWITCH_LAST


_OPENER_OF: Final = {")": "(", "]": "[", "}": "{", ">": "<", "'": "'", '"': '"'}


# A long text quotes the same few keys over and over (a page of a log).
_secret_key: Final = functools.lru_cache(maxsize=1024)(is_secret_key)


def redact_start(text: str, chars: int) -> str:
    """``redact`` of ``text``'s start: its first ``chars`` characters are
    those of ``redact(text)`` (a secret reaching into them is redacted
    whole), at the cost of that start only, whatever the size of ``text``."""
    return redact(text[: chars + _LONGEST])


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def shown_start(text: str, limit: int, *, secret: bool) -> tuple[str, int]:
    """What to show of ``text``: at most ``limit`` bytes of it (``secret``:
    redacted first), and how many bytes of ``text`` that leaves out (0:
    none; at least 1 when any is)."""
    window = text[: limit + _LONGEST]
    whole = len(window) == len(text)
    if secret:
        window = redact(window)
    head, left = cut_bytes(window, limit)
    if whole and not left:
        return head, 0
    return head, max(1, _size(text) - _size(head))
