"""Reading a SOAP reply by its envelope, not by a schema of its body.

The request is fixed by contract; the reply is whatever the server's stack produces. So a reply is read only as far
as SOAP itself defines it: an `Envelope` (SOAP 1.1 or 1.2) with a `Body`, and in it either a `Fault` or anything at
all. Names are matched by local name wherever servers differ (qualified or unqualified fault children, any prefix),
and nothing in the body is required: a report id is picked out when one is recognisable.

The parser is hardened: no DTD (a document declaring one is refused, not read), no entity expansion, no network,
no huge trees. Pure functions, no I/O.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

from lxml import etree

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
ENVELOPE_NAMESPACES = frozenset({SOAP11_ENV, SOAP12_ENV})
DETAIL_CHARS = 500

# ID, Report_ID, CSR_Impact_Report_ID, reportId, submissionID ...
_ID_NAME = re.compile(r"^(?:.*_)?(?:ID|Id|id)$|[a-z](?:ID|Id)$")
_OUR_KEY = "externalreferenceid"  # External_Reference_ID echoed back is our event id, not the report's
_PERSON = ("worker", "employee")  # a Worker_Reference echoed back, Employee_ID: the worker's ids, not the report's


class ReplyKind(StrEnum):
    ENVELOPE = "envelope"  # a SOAP envelope with a Body and no Fault
    FAULT = "fault"
    NOT_ENVELOPE = "not_envelope"  # empty, not XML, or XML that is no SOAP envelope
    REFUSED = "refused"  # a DTD (with or without entity declarations): refused unread


@dataclass(frozen=True)
class SoapFault:
    code: str | None  # faultcode (1.1) or Code/Value (1.2), as written: `SOAP-ENV:Client.validationError`
    subcodes: tuple[str, ...]  # SOAP 1.2 Subcode values
    message: str  # faultstring or Reason/Text; the detail's text when those are empty

    def describe(self) -> str:
        code = self.code or "without a faultcode"
        if self.subcodes:
            code += f" ({', '.join(self.subcodes)})"
        return f"{code}: {self.message}" if self.message else code


@dataclass(frozen=True)
class SoapReply:
    kind: ReplyKind
    text: str | None = None  # the body decoded as the document declares (envelopes and faults only)
    fault: SoapFault | None = None
    report_id: str | None = None
    refused: str | None = None  # why a REFUSED reply was refused


class XmlRefused(ValueError):
    """The document has a DTD (and so may declare entities); it is not read any further."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_hardened(content: bytes) -> etree._Element:
    """Parse untrusted XML: entities never expanded, nothing fetched, a DTD refused (XmlRefused).

    Raises `etree.XMLSyntaxError` for what is not well-formed XML (libxml2 also refuses entity bombs as such)."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    root = etree.fromstring(content, parser=parser)
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlRefused("DTDForbidden")  # entities can only be declared in a DTD: refusing it refuses them
    return root


def read_reply(content: bytes) -> SoapReply:
    """Classify a reply body: a SOAP envelope (with its report id, if recognisable), a fault, something else
    (NOT_ENVELOPE), or a document refused for its DTD or entities (REFUSED)."""
    try:
        root = parse_hardened(content)
    except XmlRefused as exc:
        return SoapReply(ReplyKind.REFUSED, refused=exc.reason)
    except (etree.XMLSyntaxError, ValueError):
        return SoapReply(ReplyKind.NOT_ENVELOPE)
    namespace = etree.QName(root).namespace
    if _local(root) != "Envelope" or namespace not in ENVELOPE_NAMESPACES:
        return SoapReply(ReplyKind.NOT_ENVELOPE)
    body = next((c for c in _children(root) if _local(c) == "Body" and etree.QName(c).namespace == namespace), None)
    if body is None:
        return SoapReply(ReplyKind.NOT_ENVELOPE)
    text = _decoded(content, root)
    fault = next(
        (c for c in _children(body) if _local(c) == "Fault" and etree.QName(c).namespace in (namespace, None)), None
    )
    if fault is not None:
        return SoapReply(ReplyKind.FAULT, text, fault=read_fault(fault))
    return SoapReply(ReplyKind.ENVELOPE, text, report_id=report_id(body))


def read_fault(node: etree._Element) -> SoapFault:
    """A SOAP 1.1 or 1.2 Fault, children found by local name; the detail is read as text, whatever its shape."""
    code = _text(_child(node, "faultcode")) or _text(_child(_child(node, "Code"), "Value"))
    subcodes: list[str] = []
    subcode = _child(_child(node, "Code"), "Subcode")
    while subcode is not None:
        value = _text(_child(subcode, "Value"))
        if value:
            subcodes.append(value)
        subcode = _child(subcode, "Subcode")
    message = _text(_child(node, "faultstring")) or _text(_child(_child(node, "Reason"), "Text"))
    detail = _child(node, "detail") if _child(node, "detail") is not None else _child(node, "Detail")
    if not message and detail is not None:
        message = " ".join(" ".join(detail.itertext()).split())[:DETAIL_CHARS]
    return SoapFault(code or None, tuple(subcodes), message or "")


def report_id(body: etree._Element) -> str | None:
    """The id the provider gave the stored report, when one is recognisable: an `ID` typed `WID` (Workday's object
    id) first, else the first leaf named `ID`, `*_ID` or `*Id`, leaving out our own External_Reference_ID echoed
    back and the worker's ids. None when there is none: never required."""
    found: list[tuple[int, str]] = []
    for element in body.iter(etree.Element):
        name = _local(element)
        value = (element.text or "").strip()
        if not value or len(element) or not _ID_NAME.search(name) or name.replace("_", "").lower() == _OUR_KEY:
            continue
        kind = next((v for k, v in element.attrib.items() if etree.QName(k).localname == "type"), "")
        names = [name, kind, *(_local(a) for a in element.iterancestors())]
        if any(n.lower().startswith(_PERSON) for n in names):
            continue
        found.append((0 if kind == "WID" else 1, value))
    return min(found, key=lambda f: f[0])[1] if found else None


def _decoded(content: bytes, root: etree._Element) -> str:
    encoding = root.getroottree().docinfo.encoding or "utf-8"
    try:
        return content.decode(encoding, "replace")
    except LookupError:
        return content.decode("utf-8", "replace")


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _children(element: etree._Element) -> list[etree._Element]:
    return [c for c in element if isinstance(c.tag, str)]


def _child(element: etree._Element | None, name: str) -> etree._Element | None:
    if element is None:
        return None
    return next((c for c in _children(element) if _local(c) == name), None)


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""
