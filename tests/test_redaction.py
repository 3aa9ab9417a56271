"""Redaction: every spelling a provider can echo a secret in is masked, in text we store or log, and nothing else.
The spellings come from `tests.secret_spellings`, written independently of the Redactor."""

import base64
import html
import json
import re
import time
from urllib.parse import quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.benevity.fake import BenevitySandbox
from impactin_pipelines.sandbox.server import SandboxServer
from impactin_pipelines.security.redaction import MASK, Redactor
from impactin_pipelines.services.extract import extract
from tests.secret_spellings import BASIC_ENCODERS, ENCODERS, b64, json_escaped
from tests.support import add_events, add_integration, attempts, deliver, events, factory_for, rows

USER = "client id+1"
SPECIALS = "\"\\&<>/%+ '#;=é€😀"
ALPHABET = st.sampled_from(list("abcXYZ019-_.:@") + list(SPECIALS))


@pytest.mark.parametrize("name", [*ENCODERS, *BASIC_ENCODERS])
@settings(max_examples=40, deadline=None)
@given(secret=st.text(ALPHABET, min_size=4, max_size=24))
def test_every_spelling_of_a_secret_is_masked(name: str, secret: str) -> None:
    if name in BASIC_ENCODERS:
        encoded, redactor = BASIC_ENCODERS[name](USER, secret), Redactor(credentials=[(USER, secret)])
    else:
        encoded, redactor = ENCODERS[name](secret), Redactor([secret])
    assert redactor.scrub(f"[{encoded}]") == f"[{MASK}]", encoded


def test_the_reported_echoes_are_masked() -> None:
    """A JSON error, a SOAP fault and a form echo as providers sent them, next to text that must survive."""
    key, password, client = 'SECRET/BNV"KEY', "SECRET&WD<p>1", "SECRET+GD/%x y"
    redactor = Redactor([key, password], credentials=[("gd-client", client)])
    body = json.dumps({"error": "invalid", "echo": f"X-API-Key: {key}"})
    assert body.count('SECRET/BNV\\"KEY') == 1
    assert redactor.scrub(body) == json.dumps({"error": "invalid", "echo": f"X-API-Key: {MASK}"})
    fault = "<faultstring>password SECRET&amp;WD&lt;p&gt;1 is not accepted</faultstring>"
    assert redactor.scrub(fault) == f"<faultstring>password {MASK} is not accepted</faultstring>"
    form = f"grant_type=client_credentials&client_id=gd-client&client_secret={quote_plus(client)}"
    assert redactor.scrub(form) == f"grant_type=client_credentials&client_id=gd-client&client_secret={MASK}"
    basic = f"Authorization: Basic {b64('gd-client:' + client)}"
    assert redactor.scrub(basic) == f"Authorization: Basic {MASK}"


def test_a_secret_inside_any_base64_blob_cannot_be_decoded_back() -> None:
    """Basic credentials with a user name we were not told, or a base64 dump of a whole request."""
    secret = "scan-secret/with+specials&1"
    redactor = Redactor([secret])
    for prefix in ("", "a", "ab", "someone-else:", "POST /token\r\n\r\nclient_secret="):
        blob = b64(prefix + secret + " and more")
        scrubbed = redactor.scrub(f"dump {blob} end") or ""
        assert scrubbed != f"dump {blob} end"
        for part in scrubbed.split(MASK):
            letters = re.sub(r"[^A-Za-z0-9+/]", "", part)
            for skip in range(4):
                chunk = letters[skip:]
                chunk = chunk[: len(chunk) // 4 * 4]
                assert secret.encode() not in base64.b64decode(chunk), (prefix, part)


def test_text_without_the_secret_is_left_alone() -> None:
    secret = 'SECRET/BNV"KEY&1'
    redactor = Redactor([secret], credentials=[("user", secret)])
    for text in (
        json.dumps({"error": 'SECRET/BNV"KEY&2 is close but not it', "path": "a\\/b", "html": "&amp; &lt; &#x41;"}),
        "100%25 of SECRET%2FBNV%22KEY%262 &unknown; \\q %zz &#xZZ;",
        "<p>caf&eacute; &#128512; &amp;amp;</p>",
        "",
    ):
        assert redactor.scrub(text) == text
    assert redactor.scrub(None) is None
    assert Redactor([None, "", "abc"]).scrub("abc abc") == "abc abc"  # too short to mask safely


def test_the_mask_covers_the_whole_escape_around_a_match() -> None:
    """A match that starts or ends inside an escape masks all of it: no half-escape is left to decode."""
    redactor = Redactor(["p&ss<word"])
    assert redactor.scrub("x&#x70;&amp;ss&lt;word&#x21;y") == f"x{MASK}&#x21;y"
    assert redactor.scrub("%70%26ss%3Cword") == MASK
    assert redactor.scrub("p&amp;amp;ss&amp;lt;word p&ss<word") == f"{MASK} {MASK}"


def test_longest_secret_first() -> None:
    """A secret that contains another is masked whole, not around the shorter one."""
    redactor = Redactor(["abcd", "xx-abcd-yy"])
    assert redactor.scrub("xx-abcd-yy and abcd") == f"{MASK} and {MASK}"


def test_a_derived_redactor_is_built_once_per_extra_secret() -> None:
    """`with_secrets(token)` runs on every request: the same token must not rebuild the patterns each time."""
    base = Redactor(["client-secret-1"])
    first = base.with_secrets(["access-token-1"])
    assert base.with_secrets(["access-token-1"]) is first
    assert base.with_secrets([None, "client-secret-1"]) is base
    assert first.scrub("client-secret-1 access-token-1") == f"{MASK} {MASK}"
    assert base.scrub("access-token-1") == "access-token-1"


def test_an_excerpt_never_ends_in_half_a_secret() -> None:
    secret = 'SECRET/BNV"KEY'
    redactor = Redactor([secret])
    text = "x" * 95 + json_escaped(secret) + "y" * 10_000
    excerpt = redactor.excerpt(text, 100) or ""
    assert excerpt == "x" * 95 + MASK + "yy"
    assert redactor.excerpt("short", 100) == "short"


def test_scrubbing_a_large_body_stays_fast() -> None:
    """It runs on every stored response: a 60 KB HTML error page full of character references and a 64 KB JSON body
    dense with escapes of all three families each take well under half a second, secrets still found."""
    redactor = Redactor(["s3cr&t/one", 'se"cret\\two'], credentials=[("id", "se+cret three")]).with_secrets(
        ["tok_abcdefghijklmnop"]
    )
    line = "<p>Caf&eacute; &amp; r&eacute;sum&eacute; &#8220;q&#8221; &lt;b&gt; <a href='/x?a=1&amp;b=%20'>x</a></p>\n"
    page = (line * 600)[:60000] + html.escape('se"cret\\two') + "</body></html>"
    dense = ('{"a": "caf\\u00e9 &amp; \\"q\\" 100%25 &#x41; x%2By"} ' * 2000)[:65000] + quote_plus("se+cret three")
    for body in (page, dense):
        started = time.perf_counter()
        scrubbed = redactor.scrub(body) or ""
        assert time.perf_counter() - started < 0.5
        assert scrubbed.count(MASK) == 1 and scrubbed.endswith((f"{MASK}</body></html>", MASK))


def test_a_secret_straddling_the_error_excerpt_leaves_no_part_behind(engine) -> None:
    """Over real HTTP: an error body quoting the API key (JSON-escaped) right where the excerpt kept in `last_error`
    (300 characters of the body) is cut. The first part of the key must not survive the cut."""
    api_key = 'bnv-key/"with"\\specials&<>%+-7f3a91'
    provider = BenevitySandbox(api_key=api_key)
    with SandboxServer(providers=[provider]) as sandbox:
        add_integration(engine, "acme", "benevity")
        add_events(engine, events("acme", 1))
        extract(engine, "acme", Provider.BENEVITY)
        body = json.dumps({"pad": "p" * (300 - 20 - 8), "key": api_key})
        assert body.index("bnv-key") == 300 - 8  # the cut falls 8 characters into the key
        provider.configure({"fail_next": {"status": 400, "body": body}})
        deliver(engine, factory_for(engine, sandbox), "benevity")
    [row] = rows(engine)
    assert row["status"] == "failed" and row["error_kind"] == "rejected"
    assert row["last_error"].endswith(f'"key": "{MASK}"}}'), row["last_error"][-40:]
    [attempt] = attempts(engine)
    stored = [row["last_error"], row["provider_response"], attempt["error"], attempt["response_excerpt"]]
    assert [text for text in stored if text and "bnv-key" in text] == []
