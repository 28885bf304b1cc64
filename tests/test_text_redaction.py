"""S12: what ``shown_text.redact`` hides of a text and what it keeps — the
one function the CLI's ``show``, the console's pages and API, the library's
log lines and its OpenTelemetry spans redact error texts with (DESIGN:
never log secrets from contexts by default).

Under-redaction is the security failure: every case here that quotes a
secret asserts it is gone, whole. Over-redaction is the usability one: the
text around a secret, and values under innocent names, stay as they were.
Every pattern is linear on a megabyte of adversarial text: ``redact`` runs
on whatever a participant's exception says (pytest's timeout fails a test
that backtracks).
"""

from __future__ import annotations

import pytest

from fallback_saga.log_lines import logged_text, one_line
from fallback_saga.redaction import is_secret_key
from fallback_saga.shown_text import redact, redact_start

CARD = "4111111111111111"
CARD2 = "5500005555555559"
PASSWORD = "hunter2-Pa55"
STRIPE = "sk_live_51Hx9aZbQ2c"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
BASIC = "dXNlcjpodW50ZXIy"  # base64 of "user:hunter2"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# Pieces of each secret: none may be left in a redacted text.
SECRET_PIECES = (CARD, CARD2, PASSWORD, "hunter2", STRIPE[8:], JWT[40:60], BASIC,
                 AWS_SECRET[10:30], "prodkey", "p4ss")


def leaked(text: str) -> list[str]:
    return [piece for piece in SECRET_PIECES if piece in text]


# A secret-named key whose value is a collection, as a repr or JSON quotes it.
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"declined: {{'card_numbers': ['{CARD}', '{CARD2}'], 'amount': 5}}",
         "declined: {'card_numbers': ***, 'amount': 5}"),
        ("{'password': ('hunter2', 'p4ss'), 'user': 'bob'}", "{'password': ***, 'user': 'bob'}"),
        ('{"api_keys": {"prod": "sk_prodkey", "test": "x"}, "n": 1}',
         '{"api_keys": ***, "n": 1}'),
        ("{'api_keys': {'prod': 'sk_prodkey'}, 'n': 1}", "{'api_keys': ***, 'n': 1}"),
        ("token=[hunter2, p4ss] user=bob", "token=*** user=bob"),
        ("{'token': {'hunter2', 'p4ss'}, 'x': 1}", "{'token': ***, 'x': 1}"),
        ("{'token': [['hunter2', ']'], [3]], 'x': 1}", "{'token': ***, 'x': 1}"),
        ("{'password': SecretBox(value='hunter2'), 'a': 1}", "{'password': ***, 'a': 1}"),
        ("{'password': <Secret hunter2 at 0x7f>, 'a': 1}", "{'password': ***, 'a': 1}"),
        # Cut inside the collection (a text at its limit): to the end.
        (f"{{'card_numbers': ['{CARD}', '{CARD2}", "{'card_numbers': ***"),
    ],
)
def test_S12_a_collection_under_a_secret_key_is_redacted_whole(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert leaked(redact(text)) == []


# A value ends where the text's structure says it does: a bracket opened
# before its key, a query's next parameter, a quote's end.
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("(password=hunter2)", "(password=***)"),
        ("Login(user=bob, password=hunter2) failed", "Login(user=bob, password=***) failed"),
        ("{password=hunter2}", "{password=***}"),
        ("[password=hunter2] x", "[password=***] x"),
        ("b'password=hunter2'", "b'password=***'"),
        ("password=hunter2&user=bob", "password=***&user=bob"),
        ("Server=db;Password=hunter2;Uid=app", "Server=db;Password=***;Uid=app"),
        ("{'url': 'https://x.example/cb?token=hunter2', 'n': 1}",
         "{'url': 'https://x.example/cb?token=***', 'n': 1}"),
        ('{"url": "https://x.example/cb?api_key=hunter2"}',
         '{"url": "https://x.example/cb?api_key=***"}'),
        ("{'pin': 1234, 'x': 1}", "{'pin': ***, 'x': 1}"),
        ('password="hunter2 with space" user=x', "password=*** user=x"),
        ("password => 'hunter2', user=bob", "password => ***, user=bob"),
        ("{'password' : 'hunter2'}", "{'password' : ***}"),
    ],
)
def test_S12_a_redacted_value_keeps_the_structure_around_it(text: str, shown: str) -> None:
    assert redact(text) == shown


# What an unquoted value cannot be told apart from: it stays redacted (a
# password may end with any of these characters).
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("password=hunter2, user=bob", "password=*** user=bob"),
        ("password=hun,ter2 user=bob", "password=*** user=bob"),
        ("password=hunter2) no opener", "password=*** no opener"),
        ("password=hun(ter2 x", "password=***"),  # an open bracket: to the end
        ("api_key=hun,ter2 x", "api_key=*** x"),
        ("token=hun)ter2 x", "token=*** x"),
        ("password=hun;ter2", "password=***"),
    ],
)
def test_S12_punctuation_an_unquoted_secret_may_hold_stays_redacted(
    text: str, shown: str
) -> None:
    assert redact(text) == shown
    assert "ter2" not in redact(text)


# Secrets recognizable by their shape, quoted without a key.
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"request failed with header Basic {BASIC}", "request failed with header Basic ***"),
        (f"got Bearer {JWT} from cache", "got Bearer *** from cache"),
        (f"token {JWT} expired", "token *** expired"),
        (f"jwt={JWT[:50]}", "jwt=***"),  # cut inside it
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowhunter2\nabc\n-----END RSA PRIVATE KEY-----\nok",
         "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY-----\nok"),
        ("bad key -----BEGIN PRIVATE KEY-----\\nMIIEvhunter2",
         "bad key -----BEGIN PRIVATE KEY-----***"),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,"
         "AB\n\nhunter2\n-----END ENCRYPTED PRIVATE KEY-----",
         "-----BEGIN ENCRYPTED PRIVATE KEY-----***-----END ENCRYPTED PRIVATE KEY-----"),
        (f"stripe: No such customer; key {STRIPE} used", "stripe: No such customer; key *** used"),
        ("github: ghp_hunter2hunter2hunter2hunter2abcd denied", "github: *** denied"),
        ("slack: xoxb-1234-hunter2hunter2 revoked", "slack: *** revoked"),
        (f"aws: AKIAIOSFODNN7EXAMPLE {AWS_SECRET} rejected",
         "aws: AKIAIOSFODNN7EXAMPLE *** rejected"),
        ("redis://:hunter2@cache:6379/0 refused", "redis://:***@cache:6379/0 refused"),
        ("Cookie: theme=dark; sessionid=hunter2\nHost: x", "Cookie: ***\nHost: x"),
        ("<password>hunter2</password><user>bob</user>",
         "<password>***</password><user>bob</user>"),
    ],
)
def test_S12_a_secret_quoted_without_a_key_is_redacted_by_its_shape(
    text: str, shown: str
) -> None:
    assert redact(text) == shown
    assert leaked(redact(text)) == []


# A payment card's number quoted in prose, without a key (a participant's
# "declined for card 4111..."): redacted by its shape — 13 to 19 digits,
# plain or grouped as printed, of an issuer's first digit (2 to 6), whose
# check digit holds (Luhn) — keeping the last four, as a receipt does.
CARD_TEXTS = [
    (f"declined for card {CARD}", "declined for card ***1111"),
    ("card 4111 1111 1111 1111 declined", "card ***1111 declined"),
    ("card 4111-1111-1111-1111, expired", "card ***1111, expired"),
    ("amex 3782 822463 10005 refused", "amex ***0005 refused"),
    ("amex 378282246310005", "amex ***0005"),
    ("diners 30569309025904 ok", "diners ***5904 ok"),
    ("mastercard (2221000000000009) blocked", "mastercard (***0009) blocked"),
    (f'{{"note": "pay with {CARD2}"}}', '{"note": "pay with ***5559"}'),
    ("{'card': Card(number='6011111111111117')}", "{'card': Card(number='***1117')}"),
    # A grouping whose digits fail the check, then a card: the card is found.
    ("4242 4111 1111 1111 1111", "4242 ***1111"),
]


@pytest.mark.parametrize(("text", "shown"), CARD_TEXTS)
def test_S12_a_card_number_quoted_without_a_key_is_redacted_by_its_shape(
    text: str, shown: str
) -> None:
    """It was shown whole: in a log line, on the console, in ``show``."""
    assert redact(text) == shown
    assert leaked(redact(text)) == []
    assert logged_text(text) == shown
    assert one_line(text) == shown


def test_S12_numbers_that_are_no_card_stay_shown() -> None:
    """Ids, timestamps, amounts and counts are not card numbers: a check
    digit that fails, a first digit no card has (a Unix time in ms or ns, a
    snowflake id), a run of digits too long or too short, a part of a
    longer word or number, a float's digits."""
    for text in (
        "order 4111111111111112 failed",  # the check digit fails
        "at 1765142220123 (ms) and 1765142220123456789 (ns)",
        "snowflake 1180000000000000001",
        "amount 0.4111111111111111 and 4111111111111111.5",
        "ids o-4111111111111111x and A4111111111111111",
        "digits 41111111111111111111111",
        "short 411111111111",
        "b47a220b-d059-acf2-2483-000000000001",
        "phone +1 415 555 2671, fax 4155552672",
        "version 4.1.1.1 build 41111",
    ):
        assert redact(text) == text, text
        assert one_line(text) == text, text


# Keys and values in the other forms a text quotes them in.
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("{'password': b'hunter2', 'n': 1}", "{'password': ***, 'n': 1}"),
        ("{b'password': b'hunter2'}", "{b'password': ***}"),
        ('{"error": "{\\"password\\": \\"hunter2\\", \\"n\\": 1}"}',
         '{"error": "{\\"password\\": ***, \\"n\\": 1}"}'),
        ("{'password': '''hunter2''', 'n': 1}", "{'password': ***, 'n': 1}"),
        ('{"card number": "4111111111111111"}', '{"card number": ***}'),
        ("{'password': 'hun\\'ter2', 'user': 'bob'}", "{'password': ***, 'user': 'bob'}"),
    ],
)
def test_S12_secrets_in_bytes_escaped_and_spaced_forms_are_redacted(
    text: str, shown: str
) -> None:
    assert redact(text) == shown
    assert leaked(redact(text)) == []


def test_S12_a_secret_longer_than_the_scan_is_redacted_to_the_end() -> None:
    """A value longer than what is scanned for its end (a PEM key in a repr,
    a huge token) showed its tail: everything after it is redacted now —
    the start of a text is redacted as the whole of it is."""
    for head in ("{'private_key': '", "api_key=", "password=", "{'tokens': [", "Bearer "):
        text = head + "hunter2" * 2000 + "', 'n': 1}"
        assert "hunter2" not in redact(text), head
        assert "hunter2" not in redact_start(text, 100), head
        assert redact(text).startswith(head.rstrip("'[")), head


def test_S12_innocent_names_and_texts_stay_shown() -> None:
    for name in ("token_count", "prompt_tokens", "completion_tokens", "max_tokens",
                 "token_type", "password_length", "secret_name", "card_number_type",
                 "pin_count", "passenger", "signal", "credit_card_type", "session_count",
                 "session_name", "saga_id", "session_idle_timeout", "sid_count", "side",
                 "consider", "account_sid", "oracle_sid", "csrf_count"):
        assert not is_secret_key(name), name
    for name in ("refresh_token", "clientSecret", "private_key", "x_api_key", "Api-Key",
                 "tokens", "card_tokens", "session_token", "sessionToken", "session_id",
                 "sessionId", "sessionid", "SESSIONID", "JSESSIONID", "PHPSESSID",
                 "ASP.NET_SessionId", "session_key", "sid", "connect.sid", "csrftoken",
                 "x-csrf-token", "_csrf", "XSRF-TOKEN"):
        assert is_secret_key(name), name
    for text in (
        "usage: {'prompt_tokens': 12, 'completion_tokens': 30, 'token_count': 42}",
        "Basic authentication failed for user bob",
        "Bearer token required (realm=api)",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b failed",
        "order o-1: 409 Conflict (retry in 5s); see https://x.example/o?id=o-1&page=2",
        "passenger=Ada signal=3 credit_card_type=visa",
        "Key (order_id)=(o-7) already exists.",
        "eyJ alone is no token; sk_live is no key",
        "docker run -p 8080:80 nginx; ssh -p 2222 host; psql -p 5432 -U app orders",
        "mysql -P 3306 -u app orders",
        "cp -p a b && mysql -u app orders",
        "session_count=3 session_name=web saga_id=o-1",
        "{user: bob, port: 5432}",
        "{user: bob,\n  port: 5432}",
        # A MySQL client's -p with a space prompts for the password: the word
        # after it is the database's name (sshpass's is its password).
        "mysql -u app -p orders",
        "mariadb -u app -p shop -e 'select 1'",
        "mysqldump -p -u root shop > shop.sql",
        "Command '['mysql', '-u', 'root', '-p', 'orders']' returned non-zero exit status 1.",
        # Flags named after a password that take no password: a switch, or
        # where it is read from (a path shows).
        "mysqldump --skip-password shop",
        "pg_dump --no-password orders",
        "psql --without-password orders",
        "docker login --password-stdin registry.example.com",
        "ansible-playbook --ask-vault-password site.yml",
        "tool --password-file /run/secrets/db orders",
        "Command '['pg_dump', '--no-password', 'orders']' returned non-zero exit status 1.",
    ):
        assert redact(text) == text, text


# Texts built to make a backtracking pattern take minutes: a megabyte each.
ADVERSARIAL = (
    "a" * 1_000_000,
    "password=" * 111_112,
    "password='" * 100_000,
    "{'token': [" * 90_000,
    "{'token': (" + "(" * 1_000_000,
    "token=[" + "'" * 1_000_000,
    "Bearer " * 140_000,
    "Basic " + "A" * 1_000_000,
    "eyJ" * 333_334,
    "eyJaaaaaaaaaaaa." * 62_500,
    "-----BEGIN PRIVATE KEY-----" * 37_000,
    "sk_live_" * 125_000,
    "AKIA" * 250_000,
    "AKIAIOSFODNN7EXAMPLE " + "A/" * 500_000,
    "ghp_" + "a" * 1_000_000,
    "://:" * 250_000,
    "a://" + ":" * 1_000_000,
    "a://b:" * 166_667,
    "x://" + "y:" * 500_000,
    "<password>" * 100_000,
    "Cookie: " * 125_000,
    '\\"password\\": \\"' * 70_000,
    "(password=a)" * 83_000,
    "((((((((((password=" + ")" * 1_000_000,
    "x&" * 500_000,
    "password=a&" * 90_000,
    "'x': " * 200_000,
    "\"password\": b'" * 70_000,
    "password=" + "a;b=" * 250_000,
    "password: |\n" + " a\n" * 330_000,
    "a: |\n" * 166_667,
    "password: >\n" * 83_334,
    "--password " * 90_000,
    "'--password', " * 70_000,
    "--" * 500_000,
    "'" + "a " * 500_000,
    "'a: '" * 166_667,
    "mysql " * 166_667,
    "mysql -p" * 125_000,
    "mysql " + "-p " * 333_333,
    "sshpass -p" + "'" * 1_000_000,
    "['mysql', '-p', " * 62_500,
    "mysql --password " * 60_000,
    "mysql" + " --password" * 90_000,
    "{password: " * 90_000,
    "{password: " + "a, " * 333_333,
    "{" * 500_000 + "password: " + "a" * 500_000,
    "session_id=" * 90_000,
    "sid=a&" * 166_667,
    "4" * 1_000_000,
    "4111 " * 200_000,
    "4111-1111 " * 100_000,
    "3782 822463 " * 90_000,
)


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda text: repr(text[:24]))
def test_S12_redact_is_linear_on_a_megabyte_of_adversarial_text(text: str) -> None:
    """Quadratic, any of these takes hours (pytest's timeout fails it)."""
    assert len(redact(text)) <= 3 * len(text)


# A command line a subprocess error quotes (``CalledProcessError``: its
# argv's repr), a config's YAML, a key the old ``password=`` pattern found
# inside a longer word.
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("psql --password=hunter2 -h db", "psql --password=*** -h db"),
        ("psql --password hunter2 -h db", "psql --password *** -h db"),
        ("Command '['psql', '--password', 'hunter2', '-h', 'db']' returned non-zero exit status 2.",
         "Command '['psql', '--password', ***, '-h', 'db']' returned non-zero exit status 2."),
        ("env: _password=hunter2 x=1", "env: _password=*** x=1"),
        ("config: db_pw=hunter2", "config: db_pw=***"),
        ("password: |\n  hunter2\n  p4ss\nuser: bob", "password: ***\nuser: bob"),
        ("tls:\n  private_key: >-\n    hunter2\n    p4ss\n  port: 1",
         "tls:\n  private_key: ***\n  port: 1"),
        ("--token-file /etc/app/token --verbose", "--token-file /etc/app/token --verbose"),
        # A password attached to -p (the MySQL clients), or after it (sshpass).
        ("mysql -u root -phunter2 orders", "mysql -u root -p*** orders"),
        ("/usr/bin/mysqldump -h db -p'hunter2 p4ss' shop", "/usr/bin/mysqldump -h db -p*** shop"),
        ("mariadb -u app -p -phunter2", "mariadb -u app -p -p***"),
        ("Command '['sshpass', '-phunter2', 'ssh', 'h']' returned non-zero exit status 5.",
         "Command '['sshpass', '-p***', 'ssh', 'h']' returned non-zero exit status 5."),
        ("sshpass -p hunter2 ssh -p 2222 deploy@host", "sshpass -p *** ssh -p 2222 deploy@host"),
        ("sshpass -phunter2 rsync -a x host:y", "sshpass -p*** rsync -a x host:y"),
        ("Command '['mysql', '-u', 'root', '-phunter2', 'db']' returned non-zero exit status 1.",
         "Command '['mysql', '-u', 'root', '-p***', 'db']' returned non-zero exit status 1."),
        ("Command '['sshpass', '-p', 'hunter2', 'ssh', 'h']' returned non-zero exit status 5.",
         "Command '['sshpass', '-p', ***, 'ssh', 'h']' returned non-zero exit status 5."),
        ("docker run -p 8080:80 app && mysql -phunter2 db",
         "docker run -p 8080:80 app && mysql -p*** db"),
        # A YAML flow mapping: a plain value ends at ", " or "}", and may hold spaces.
        ("config {user: bob, password: hunter2}", "config {user: bob, password: ***}"),
        ("{user: bob, password: hunter2 p4ss, host: db}", "{user: bob, password: ***, host: db}"),
        ("{password: 'hunter2 p4ss', user: bob}", "{password: ***, user: bob}"),
        ("{ password : hunter2 }", "{ password : *** }"),
        ("[{user: bob, pin: 1234}, {user: al, password: hunter2}]",
         "[{user: bob, pin: ***}, {user: al, password: ***}]"),
        ("{password: hun,ter2 p4ss}", "{password: ***}"),
        # ... across lines too: after a "," or "{" that ends a line, and
        # folded over lines (a plain value ends at "," and a space or a line
        # break, or at "}").
        ("{user: bob,\n  password: hunter2 p4ss}", "{user: bob,\n  password: ***}"),
        ("{user: bob,\n  password: hunter2 p4ss,\n  host: db}",
         "{user: bob,\n  password: ***,\n  host: db}"),
        ("db: {\n  password: hunter2 p4ss\n}", "db: {\n  password: ***\n}"),
        ("{password: hunter2\n  p4ss, user: bob}", "{password: ***, user: bob}"),
        # A flag named after a password that takes none: its next word shows;
        # --password's is hidden.
        ("pg_dump --no-password --skip-password db --password hunter2",
         "pg_dump --no-password --skip-password db --password ***"),
        # Session ids and CSRF tokens are bearer credentials.
        ("GET /cart?session_id=hunter2&page=2", "GET /cart?session_id=***&page=2"),
        ("Set-Cookie: sessionid=hunter2; Path=/", "Set-Cookie: ***"),
        ("redirect sid=hunter2 connect.sid=s%3Ahunter2 saga_id=o-1",
         "redirect sid=*** connect.sid=*** saga_id=o-1"),
        ("{'csrftoken': 'hunter2', 'JSESSIONID': 'p4ss'}", "{'csrftoken': ***, 'JSESSIONID': ***}"),
        ("X-CSRF-Token: hunter2\nAccept: */*", "X-CSRF-Token: ***\nAccept: */*"),
    ],
)
def test_S12_secrets_in_command_lines_and_yaml_are_redacted(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert leaked(redact(text)) == []



def test_S12_a_log_line_redacts_what_the_views_redact() -> None:
    """The library's log lines skip ``redact`` on a text that cannot quote a
    secret (most arguments: ids, names), by a cheap test: a JWT, an API
    key, a ``--password`` flag or a ``<password>`` element quote no "=" nor
    ":", and were logged whole."""
    tests = (test_S12_a_collection_under_a_secret_key_is_redacted_whole,
             test_S12_a_redacted_value_keeps_the_structure_around_it,
             test_S12_punctuation_an_unquoted_secret_may_hold_stays_redacted,
             test_S12_a_secret_quoted_without_a_key_is_redacted_by_its_shape,
             test_S12_secrets_in_bytes_escaped_and_spaced_forms_are_redacted,
             test_S12_secrets_in_command_lines_and_yaml_are_redacted)
    texts = [text for test in tests for mark in test.pytestmark  # type: ignore[attr-defined]
             if mark.name == "parametrize" for text, _ in mark.args[1]]
    texts += [f"got {JWT}", STRIPE, f"Bearer {BASIC}", "--password hunter2",
              "<pwd>hunter2</pwd>", "<password>hunter2", "'--token', 'hunter2'"]
    for text in texts:
        assert logged_text(text) == redact(text), text
        assert one_line(text) == redact(text).replace("\n", "\\x0a"), text


def test_S12_an_object_repr_is_no_xml_element() -> None:
    """``<Secret at 0x7f>`` in a repr read as an element named like a
    secret's: the text after it was redacted up to the next "<"."""
    text = "got <Secret object at 0x7f>, expected str; retry 'o-1' later"
    assert redact(text) == text
    assert redact("<password>hunter2") == "<password>***"  # cut inside it


# MySQL's clients take a password only attached to its flag: ``--password=…``
# (``-p…``, above). ``--password`` alone prompts for it, and the word after it
# is the next argument (the database's name): shown. After another program on
# the line, and for the programs whose --password takes the next word, hidden.
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("mysql -u app --password orders", "mysql -u app --password orders"),
        ("mariadb --password shop -e 'select 1'", "mariadb --password shop -e 'select 1'"),
        ("mysqladmin --password status", "mysqladmin --password status"),
        ("/usr/bin/mysqldump -u root --password shop > shop.sql",
         "/usr/bin/mysqldump -u root --password shop > shop.sql"),
        ("Command '['mysqldump', '--password', 'shop']' returned non-zero exit status 2.",
         "Command '['mysqldump', '--password', 'shop']' returned non-zero exit status 2."),
        ("mysql --password2 orders", "mysql --password2 orders"),
        # Attached, it is the password.
        ("mysql -u app --password=hunter2 orders", "mysql -u app --password=*** orders"),
        ("mysqldump --password='hunter2 p4ss' shop", "mysqldump --password=*** shop"),
        # Another program's --password, after a MySQL client's command ended.
        ("mysqldump --password shop | docker login --password hunter2 reg",
         "mysqldump --password shop | docker login --password *** reg"),
        ("mysql --password db; psql --password hunter2 -h db",
         "mysql --password db; psql --password *** -h db"),
        ("mysql --password db\ndocker login --password hunter2 reg",
         "mysql --password db\ndocker login --password *** reg"),
        ("docker login --password hunter2 reg", "docker login --password *** reg"),
        ("mysql_tool --password hunter2", "mysql_tool --password ***"),
    ],
)
def test_S12_a_mysql_clients_password_is_the_attached_value_only(text: str, shown: str) -> None:
    assert redact(text) == shown
