"""Fake Workday: the CSR_Impact_Report SOAP service with WS-Security UsernameToken checking (PasswordText and
PasswordDigest, with nonce replay and freshness checks), SOAP faults, and dedup by `External_Reference_ID`; and the
REST API behind an OAuth2 client-credentials token endpoint.

Incoming XML is parsed by zeep's loader with DTDs, entities and external references forbidden.
Faults are answered the way Workday answers them: HTTP 500 with a SOAP 1.1 Fault whose faultcode is
`SOAP-ENV:Client.authenticationError`, `SOAP-ENV:Client.validationError` or `SOAP-ENV:Server.processingError`.

Two knobs make it behave like SOAP servers written by others: `soap_reply` answers a stored report with any reply
body (another shape, encoding or content type), and `validate_before_auth` checks the body before the
UsernameToken, as frameworks that validate against the schema first do (an invalid body then gets the same
validation fault whatever the credentials).
"""

import base64
import binascii
import hashlib
import hmac
import itertools
import re
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from lxml import etree
from zeep import Settings
from zeep.exceptions import Error as ZeepError
from zeep.loader import parse_xml

from impactin_pipelines.sandbox.core import ProviderSandbox, Request, Response
from impactin_pipelines.sandbox.oauth import OAuthTokenIssuer

TENANT_ID = "sandbox_tenant"
USERNAME = "isu_impactin@sandbox_tenant"
PASSWORD = "sandbox-workday-password"
CLIENT_ID = "sandbox-workday-client"
CLIENT_SECRET = "sandbox-workday-client-secret"
TOKEN_PATH = "/ccx/oauth2/token"

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WD = "urn:com.workday/bsvc"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_TEXT = "#PasswordText"
PASSWORD_DIGEST = "#PasswordDigest"
AUTH_FAULT = "SOAP-ENV:Client.authenticationError"
VALIDATION_FAULT = "SOAP-ENV:Client.validationError"
PROCESSING_FAULT = "SOAP-ENV:Server.processingError"
CREATED_WINDOW = timedelta(minutes=5)  # digest tokens older (or newer) than this are refused
_SOAP_PATH = re.compile(r"^/ccx/service/(?P<tenant>[^/]+)/CSR_Impact_Report$")
_REST_PATH = re.compile(r"^/api/v1/(?P<tenant>[^/]+)/csr-impact-reports$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REPORT_FIELDS = {
    "External_Reference_ID": "wd:External_Reference_ID",
    "Report_Date": "wd:Report_Date",
    "Activity_Type": "wd:CSR_Activity/wd:Activity_Type",
    "Value": "wd:CSR_Activity/wd:Value",
    "Unit_of_Measure": "wd:CSR_Activity/wd:Unit_of_Measure",
}
_PARSE_SETTINGS = Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)


class SoapFault(Exception):
    def __init__(self, code: str, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = errors or []  # (message, xpath) for a wd:Validation_Fault detail


def fault_response(fault: SoapFault, status: int = 500) -> Response:
    """A SOAP 1.1 Fault, HTTP 500 as SOAP 1.1 prescribes."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"SOAP-ENV": SOAP_ENV, "wd": WD})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    node = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(node, "faultcode").text = fault.code
    etree.SubElement(node, "faultstring").text = fault.message
    if fault.errors:
        detail = etree.SubElement(etree.SubElement(node, "detail"), f"{{{WD}}}Validation_Fault")
        for message, xpath in fault.errors:
            error = etree.SubElement(detail, f"{{{WD}}}Validation_Error")
            etree.SubElement(error, f"{{{WD}}}Message").text = message
            etree.SubElement(error, f"{{{WD}}}Xpath").text = xpath
    xml = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    return Response(status, xml, {"Content-Type": "text/xml; charset=utf-8"})


def reply_response(reference: str) -> Response:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"env": SOAP_ENV, "wd": WD})
    body = etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body")
    reply = etree.SubElement(body, f"{{{WD}}}Submit_CSR_Impact_Report_Response")
    ref = etree.SubElement(reply, f"{{{WD}}}CSR_Impact_Report_Reference")
    etree.SubElement(ref, f"{{{WD}}}ID", {f"{{{WD}}}type": "WID"}).text = reference
    xml = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    return Response(200, xml, {"Content-Type": "text/xml; charset=utf-8"})


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """UsernameToken Profile 1.1: Base64(SHA-1(nonce + created + password))."""
    sha1 = hashlib.sha1(nonce + created.encode() + password.encode(), usedforsecurity=False)  # the profile fixes SHA-1
    return base64.b64encode(sha1.digest()).decode()


def _text(parent: etree._Element, path: str) -> str | None:
    node = parent.find(path, namespaces={"wd": WD, "wsse": WSSE, "wsu": WSU})
    return node.text.strip() if node is not None and node.text is not None else None


def read_report(submit: etree._Element) -> dict[str, Any]:
    """The submitted CSR_Impact_Report as a dict, or a validation fault naming each bad field and its XPath."""
    report = submit.find("wd:CSR_Impact_Report", namespaces={"wd": WD})
    if report is None:
        raise SoapFault(
            VALIDATION_FAULT,
            "Validation error occurred. CSR_Impact_Report is required",
            [("CSR_Impact_Report is required", "/wd:Submit_CSR_Impact_Report")],
        )
    base = "/wd:Submit_CSR_Impact_Report/wd:CSR_Impact_Report"
    errors: list[tuple[str, str]] = []
    values = {name: _text(report, path) for name, path in _REPORT_FIELDS.items()}
    for name, value in values.items():
        if not value:
            errors.append((f"{name} is required", f"{base}/{_REPORT_FIELDS[name]}"))
    if values["Report_Date"] and not _is_date(values["Report_Date"]):
        errors.append((f"Report_Date {values['Report_Date']!r} is not an xsd:date", f"{base}/wd:Report_Date"))
    if values["Value"] and not _is_decimal(values["Value"]):
        errors.append((f"Value {values['Value']!r} is not an xsd:decimal", f"{base}/{_REPORT_FIELDS['Value']}"))
    worker = report.find("wd:Worker_Reference/wd:ID", namespaces={"wd": WD})
    worker_type = worker.get(f"{{{WD}}}type") if worker is not None else None
    if worker is None or not (worker.text or "").strip() or not worker_type:
        errors.append(("Worker_Reference/ID with wd:type is required", f"{base}/wd:Worker_Reference/wd:ID"))
    if errors:
        raise SoapFault(VALIDATION_FAULT, "Validation error occurred. " + errors[0][0], errors)
    assert worker is not None
    return {
        "External_Reference_ID": values["External_Reference_ID"],
        "Report_Date": values["Report_Date"],
        "Worker_Reference": {"ID": {"type": worker_type, "value": (worker.text or "").strip()}},
        "CSR_Activity": {
            "Activity_Type": values["Activity_Type"],
            "Value": values["Value"],
            "Unit_of_Measure": values["Unit_of_Measure"],
        },
    }


def read_submission(envelope: etree._Element) -> dict[str, Any]:
    """The report in a request envelope's Body, or a validation fault."""
    submit = envelope.find(f"{{{SOAP_ENV}}}Body/{{{WD}}}Submit_CSR_Impact_Report")
    if submit is None:
        raise SoapFault(VALIDATION_FAULT, "Validation error occurred. Body must hold Submit_CSR_Impact_Report")
    return read_report(submit)


def rest_schema_problem(doc: Any) -> str | None:
    """What is wrong with a REST `csr-impact-reports` body (schema v3.0), naming the field; None if nothing."""
    if not isinstance(doc, dict) or doc.get("schema_version") != "v3.0":
        return "schema_version must be v3.0"
    report = doc.get("impact_report")
    if not isinstance(report, dict):
        return "impact_report is required"
    for key in ("external_reference_id", "report_date"):
        if not isinstance(report.get(key), str) or not report[key]:
            return f"impact_report.{key} is required"
    worker = report.get("worker")
    if not isinstance(worker, dict) or not isinstance(worker.get("worker_id"), str) or not worker["worker_id"]:
        return "impact_report.worker.worker_id is required"
    activity = report.get("csr_activity")
    if not isinstance(activity, dict):
        return "impact_report.csr_activity is required"
    value = activity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "impact_report.csr_activity.value must be a number"
    for key in ("activity_type", "unit_of_measure"):
        if not isinstance(activity.get(key), str) or not activity[key]:
            return f"impact_report.csr_activity.{key} is required"
    return None


def _is_decimal(text: str) -> bool:
    try:
        return Decimal(text).is_finite()
    except InvalidOperation:
        return False


def _is_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _parse_created(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class WorkdaySandbox(ProviderSandbox):
    name = "workday"

    def __init__(
        self,
        *,
        tenant_id: str = TENANT_ID,
        username: str = USERNAME,
        password: str = PASSWORD,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
    ) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.tenants = {tenant_id}
        self.username = username
        self.password = password
        self.client_id = client_id
        self.client_secret = client_secret
        self._ids = itertools.count(1)
        self._nonces: dict[str, float] = {}  # digest nonce -> when seen (replays are refused)
        self._nonce_lock = threading.Lock()
        self.soap_faults: list[dict[str, Any]] = []
        self.soap_reply: dict[str, Any] | None = None
        self.validate_before_auth = False
        self.oauth = OAuthTokenIssuer(client_id, client_secret, token_prefix="wd")

    def env(self, base_url: str) -> dict[str, str]:
        """The Workday variables (both modes) pointing at this fake; the protocol defaults to SOAP."""
        return {
            "WORKDAY_API_URL": base_url,
            "WORKDAY_TENANT_ID": self.tenant_id,
            "WORKDAY_USERNAME": self.username,
            "WORKDAY_PASSWORD": self.password,
            "WORKDAY_CLIENT_ID": self.client_id,
            "WORKDAY_CLIENT_SECRET": self.client_secret,
            "WORKDAY_TOKEN_URL": base_url + TOKEN_PATH,
        }

    # -- knobs -----------------------------------------------------------------------------------------------
    def configure_extra(self, spec: Mapping[str, Any]) -> None:
        """`tenants`: extra tenant ids this fake serves; `soap_fault_next`: SOAP faults answered (after the
        UsernameToken check) in order, e.g. {"kind": "server", "message": "...", "count": 2} or {"kind": "client"};
        `soap_reply`: the answer to every stored SOAP report until reset, {"body": "...", "status": 200,
        "content_type": "text/xml", "encoding": "utf-8"}, where `{report_id}` and `{event_id}` in the body are
        replaced (None: the default reply); `validate_before_auth`: check the body before the UsernameToken;
        plus the token endpoint's knobs (`token_expires_in`, `token_fail_next`, `expire_tokens`)."""
        self.oauth.configure(spec)
        if "tenants" in spec:
            self.tenants |= set(spec["tenants"])
        if "soap_fault_next" in spec:
            items = spec["soap_fault_next"]
            self.soap_faults.extend([items] if isinstance(items, dict) else list(items))
        if "soap_reply" in spec:
            self.soap_reply = dict(spec["soap_reply"]) if spec["soap_reply"] is not None else None
        if "validate_before_auth" in spec:
            self.validate_before_auth = bool(spec["validate_before_auth"])

    def reset_extra(self) -> None:
        self.tenants = {self.tenant_id}
        self.soap_faults.clear()
        self.soap_reply = None
        self.validate_before_auth = False
        self.oauth.reset()
        with self._nonce_lock:
            self._nonces.clear()

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "oauth": self.oauth.stats()}

    def _take_soap_fault(self) -> dict[str, Any] | None:
        with self.lock:
            while self.soap_faults:
                head = self.soap_faults[0]
                count = int(head.get("count", 1))
                if count <= 1:
                    self.soap_faults.pop(0)
                else:
                    head["count"] = count - 1
                if count >= 1:
                    return head
            return None

    # -- routing ---------------------------------------------------------------------------------------------
    def route(self, request: Request) -> Response:
        soap = _SOAP_PATH.match(request.path)
        if soap and request.method == "POST":
            return self._soap(request, soap["tenant"])
        if request.path == TOKEN_PATH:
            return self.oauth.token_response(request)
        rest = _REST_PATH.match(request.path)
        if rest and request.method == "POST":
            return self._rest(request, rest["tenant"])
        if rest and request.method == "GET":  # read-back (reconciliation) of both protocols' reports
            if rest["tenant"] not in self.tenants:
                return Response.json(404, {"error": "unknown_tenant", "tenant": rest["tenant"]})
            return self.oauth.refuse_bearer(request) or self.read_back_response(request)
        return Response.json(404, {"error": "not_found"})

    # -- REST ------------------------------------------------------------------------------------------------
    def _rest(self, request: Request, tenant: str) -> Response:
        if tenant not in self.tenants:
            return Response.json(404, {"error": "unknown_tenant", "tenant": tenant})
        refused = self.oauth.refuse_bearer(request)
        if refused is not None:
            return refused
        parsed = self.read_json_event(request, rest_schema_problem)
        if isinstance(parsed, Response):
            return parsed
        key, doc = parsed
        event_id = doc["impact_report"]["external_reference_id"]
        if event_id in self.faults.reject_events:
            return Response.json(422, {"error": "impact_report_rejected", "external_reference_id": event_id})
        record = {
            "id": f"wd_{next(self._ids):06d}",
            "event_id": event_id,
            "tenant": tenant,
            "protocol": "rest",
            "idempotency_key": key,
            "body": doc,
        }
        return self.accept_response(f"rest:{tenant}:{key}", record, external_reference_id=event_id)

    # -- SOAP ------------------------------------------------------------------------------------------------
    def _soap(self, request: Request, tenant: str) -> Response:
        if tenant not in self.tenants:
            return Response.text(404, f"<html><body>Unknown tenant {tenant}</body></html>", "text/html")
        if not (request.header("Content-Type") or "").startswith("text/xml"):
            return Response.text(415, "SOAP 1.1 requests must be text/xml")
        try:
            # zeep annotates `content` as str; it hands it to lxml, which takes the raw bytes (and their encoding).
            envelope = parse_xml(cast(str, request.body), None, settings=_PARSE_SETTINGS)
        except (ZeepError, etree.XMLSyntaxError, ValueError) as exc:
            return fault_response(SoapFault("SOAP-ENV:Client", f"request XML refused: {exc!r}"))
        try:
            report = read_submission(envelope) if self.validate_before_auth else None
            password_type = self._authenticate(envelope)
            injected = self._take_soap_fault()
            if injected is not None:
                kind = injected.get("kind", "server")
                code = PROCESSING_FAULT if kind == "server" else VALIDATION_FAULT
                raise SoapFault(code, str(injected.get("message", f"injected {kind} fault")))
            report = report or read_submission(envelope)
        except SoapFault as fault:
            response = fault_response(fault)
            response.event_id = _text(envelope, f".//{{{WD}}}External_Reference_ID")
            return response
        event_id = report["External_Reference_ID"]
        if event_id in self.faults.reject_events:
            response = fault_response(
                SoapFault(VALIDATION_FAULT, f"Validation error occurred. CSR impact report {event_id} rejected")
            )
            response.event_id = event_id
            return response
        record, duplicate = self.accept_once(
            f"soap:{tenant}:{event_id}",  # Workday dedups on External_Reference_ID, per tenant
            {
                "id": f"wd_{next(self._ids):06d}",
                "event_id": event_id,
                "tenant": tenant,
                "protocol": "soap",
                "password_type": password_type,
                "idempotency_key": request.header("X-Idempotency-Key"),
                "body": report,
            },
        )
        response = self._reply(record["id"], event_id)
        response.duplicate = duplicate
        response.event_id = event_id
        return response

    def _reply(self, report_id: str, event_id: str) -> Response:
        spec = self.soap_reply
        if spec is None:
            return reply_response(report_id)
        body = str(spec["body"]).replace("{report_id}", report_id).replace("{event_id}", event_id)
        content_type = str(spec.get("content_type", "text/xml; charset=utf-8"))
        return Response(
            int(spec.get("status", 200)), body.encode(spec.get("encoding", "utf-8")), {"Content-Type": content_type}
        )

    def _authenticate(self, envelope: etree._Element) -> str:
        """Check the UsernameToken; return "text" or "digest". Any failure is the same authentication fault."""
        token = envelope.find(f"{{{SOAP_ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        refused = SoapFault(AUTH_FAULT, "invalid username or password")
        if token is None:
            raise refused
        username = _text(token, "wsse:Username")
        password = token.find(f"{{{WSSE}}}Password")
        if username != self.username or password is None or password.text is None:
            raise refused
        kind = password.get("Type", PASSWORD_TEXT)
        if kind.endswith(PASSWORD_TEXT):
            if not hmac.compare_digest(password.text.encode(), self.password.encode()):
                raise refused
            return "text"
        if not kind.endswith(PASSWORD_DIGEST):
            raise refused
        nonce_text = _text(token, "wsse:Nonce")
        created_text = _text(token, "wsu:Created")
        created = _parse_created(created_text)
        if not nonce_text or created is None or abs(datetime.now(UTC) - created) > CREATED_WINDOW:
            raise refused
        try:
            nonce = base64.b64decode(nonce_text, validate=True)
        except (binascii.Error, ValueError):
            raise refused from None
        assert created_text is not None
        expected = password_digest(nonce, created_text, self.password)
        if not hmac.compare_digest(password.text.strip().encode(), expected.encode()):
            raise refused
        self._remember_nonce(nonce_text, refused)
        return "digest"

    def _remember_nonce(self, nonce: str, refused: SoapFault) -> None:
        now = time.monotonic()
        horizon = 2 * CREATED_WINDOW.total_seconds()
        with self._nonce_lock:
            for old in [n for n, seen in self._nonces.items() if now - seen > horizon]:
                del self._nonces[old]
            if nonce in self._nonces:
                raise refused
            self._nonces[nonce] = now
