"""How a secret looks when a provider echoes it back: written here, independently of the Redactor, the way JSON
serialisers, XML and HTML writers, form and URL encoders and HTTP Basic spell it."""

import base64
import html
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus
from xml.sax.saxutils import escape as xml_escape


def json_escaped(s: str) -> str:
    return json.dumps(s)[1:-1]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _upper_json_hex(s: str) -> str:
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), s)


def _html5_named(s: str) -> str:
    names = {"/": "&sol;", "+": "&plus;", "%": "&percnt;", "\\": "&bsol;", '"': "&QUOT;", "&": "&AMP;", "<": "&lt;"}
    return "".join(names.get(c, c) for c in s)


ENCODERS: dict[str, Callable[[str], str]] = {
    "literal": lambda s: s,
    "JSON": json_escaped,
    "JSON, ensure_ascii=False": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "JSON, uppercase \\u hex": lambda s: _upper_json_hex(json_escaped(s)),
    "JSON, escaped solidus": lambda s: json_escaped(s).replace("/", "\\/"),
    "JSON, HTML-safe (Go)": lambda s: (
        json_escaped(s).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    ),
    "JSON, every character \\u-escaped": lambda s: "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x10000 else json.dumps(c)[1:-1] for c in s
    ),
    "HTML (html.escape)": html.escape,
    "XML (saxutils)": xml_escape,
    "XML, decimal references": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "XML, hex references": lambda s: "".join(f"&#x{ord(c):X};" for c in s),
    "XML, lowercase hex with zeros": lambda s: "".join(f"&#x00{ord(c):x};" for c in s),
    "HTML5 named references": _html5_named,
    "URL (quote)": quote,
    "form (quote_plus)": quote_plus,
    "URL, nothing safe, lowercase hex": lambda s: re.sub("%..", lambda m: m.group().lower(), quote(s, safe="")),
    "base64": b64,
    "base64, URL-safe": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "form body quoted in JSON": lambda s: json_escaped(quote_plus(s)),
    "JSON quoted in XML": lambda s: html.escape(json_escaped(s)),
    "XML quoted in JSON": lambda s: json_escaped(html.escape(s)),
    "JSON quoted in JSON": lambda s: json_escaped(json_escaped(s)),
    "XML quoted in XML": lambda s: html.escape(html.escape(s)),
    "JSON in a query string": lambda s: quote(json_escaped(s), safe=""),
    "JSON in XML in a query string": lambda s: quote_plus(xml_escape(json_escaped(s), {'"': "&quot;"})),
}

BASIC_ENCODERS: dict[str, Callable[[str, str], str]] = {
    "HTTP Basic": lambda user, s: b64(f"{user}:{s}"),
    "HTTP Basic, form-encoded first (RFC 6749)": lambda user, s: b64(f"{quote_plus(user)}:{quote_plus(s)}"),
    "HTTP Basic in a JSON string (Go)": lambda user, s: json_escaped(b64(f"{user}:{s}")).replace("/", "\\/"),
}


def spellings(secret: str, user: str | None = None) -> dict[str, str]:
    """Every spelling above of `secret`, and of the HTTP Basic credentials `user:secret` when a user is given."""
    found = {name: encode(secret) for name, encode in ENCODERS.items()}
    if user is not None:
        found.update({name: encode(user, secret) for name, encode in BASIC_ENCODERS.items()})
    return found
