"""Workday over SOAP: zeep builds the `Submit_CSR_Impact_Report` envelope from the WSDL shipped in the package and
signs it with a WS-Security UsernameToken; the envelope goes out through our pooled session and
`connectors.http.exchange` (status classified like every other provider's, `X-Idempotency-Key` added, the envelope
recorded with the password, digest and nonce masked); the reply is read by `connectors.soap_reply`.

Why the reply is not bound to the WSDL: the contract fixes the request, not the reply. A server that answers a
stored report in another shape (another id element, extra elements, none at all, SOAP 1.2, another encoding) has
still stored it; failing such a reply would resend, and finally give up on, every delivery. So a SOAP envelope
without a Fault on a 2xx is a success, whatever its body holds.

Classification: a SOAP Client fault is permanent (`rejected`, faultstring in `last_error`); a Server fault, an
HTTP 5xx without a fault, or a non-XML error body keeps its status and is retried. A 2xx that is no SOAP envelope
(a proxy's page, an empty or cut-off body, a document with a DTD) is retried: Workday dedups on
`External_Reference_ID`, the event id, so a retry never double-counts.
"""

import copy
import functools
import json
import logging
import secrets
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

import requests
from lxml import etree
from zeep import Client, Settings, xsd
from zeep.exceptions import Error as ZeepError
from zeep.transports import Transport
from zeep.wsdl import Document
from zeep.wsdl.utils import etree_to_string
from zeep.wsse.username import UsernameToken

from impactin_pipelines.connectors.base import (
    AttemptResult,
    ConnectivityResult,
    OutboundDelivery,
    PreparedRequest,
)
from impactin_pipelines.connectors.http import RESPONSE_KEEP_CHARS, exchange
from impactin_pipelines.connectors.retry import RETRYABLE_STATUSES
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome
from impactin_pipelines.providers.workday.soap_reply import ReplyKind, SoapFault, SoapReply, read_reply
from impactin_pipelines.security.redaction import MASK, Redactor

WSDL_PATH = Path(__file__).with_name("wsdl") / "csr_impact_report.wsdl"
NAMESPACE = "urn:com.workday/bsvc"
BINDING = f"{{{NAMESPACE}}}CSR_Impact_ReportBinding"
OPERATION = "Submit_CSR_Impact_Report"
SERVICE_PATH = "/ccx/service/{tenant}/CSR_Impact_Report"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_MASKED_TAGS = frozenset({f"{{{WSSE_NS}}}Password", f"{{{WSSE_NS}}}Nonce"})
ZEEP_SETTINGS = Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)
CHECK_KEY = "connectivity-check"
_CREDENTIAL_HINTS = ("authentic", "security", "failedcheck", "unauthori", "credential", "password")

LOG = logging.getLogger("impactin.workday")


@functools.cache
def wsdl_document() -> Document:
    """The WSDL, parsed once per process and shared by every company's client (it is read-only after parsing)."""
    # zeep annotates `transport` as type[Transport], but it calls methods on the instance it is given.
    document = Document(str(WSDL_PATH), cast(type[Transport], Transport()), settings=ZEEP_SETTINGS)
    document.types.set_ns_prefix("wd", NAMESPACE)  # envelopes read like the contract's example: wd:...
    return document


def masked_envelope(envelope: etree._Element, redactor: Redactor) -> str:
    """The envelope as sent, for the audit trail: password or digest and nonce masked."""
    audit = copy.deepcopy(envelope)
    for element in audit.iter(*_MASKED_TAGS):
        element.text = MASK
    return redactor.scrub(etree_to_string(audit).decode("utf-8")) or ""


def fault_outcome(fault: SoapFault) -> AttemptOutcome:
    """`Server` / `Receiver` faults are the provider's trouble (retry); every other fault (Client, Sender,
    validation, authentication, WS-Security's `wsse:FailedAuthentication`) is about what we sent."""
    local = (fault.code or "").rpartition(":")[2]
    return AttemptOutcome.RETRYABLE if local.split(".")[0] in ("Server", "Receiver") else AttemptOutcome.PERMANENT


def names_credentials(fault: SoapFault) -> bool:
    """The fault's code says the credentials were refused (`Client.authenticationError`,
    `wsse:FailedAuthentication`, `wsse:InvalidSecurityToken`, ...)."""
    codes = " ".join([fault.code or "", *fault.subcodes]).lower()
    return any(hint in codes for hint in _CREDENTIAL_HINTS)


def classify_reply(result: AttemptResult, reply: SoapReply, redactor: Redactor) -> AttemptResult:
    """The exchange's classification (by HTTP status) refined by what the reply says: a fault decides by its code
    (except on a gateway's 429/502/503/504, which speaks for itself); a 2xx must be a SOAP envelope."""
    status = result.http_status
    if reply.text is not None:  # decoded as the XML declares, which HTTP's text/* default can get wrong
        result = replace(result, response_body=redactor.excerpt(reply.text, RESPONSE_KEEP_CHARS))
    if reply.kind is ReplyKind.FAULT:
        assert reply.fault is not None
        error = redactor.scrub(f"HTTP {status} SOAP fault {reply.fault.describe()}")
        if status in RETRYABLE_STATUSES and status != 500:  # SOAP puts every fault on a 500
            outcome = result.outcome
        elif reply.fault.code:
            outcome = fault_outcome(reply.fault)
        else:  # no code to go by: the status decides, and a 2xx carrying a fault is no success
            outcome = AttemptOutcome.RETRYABLE if result.outcome is AttemptOutcome.SUCCESS else result.outcome
        return replace(result, outcome=outcome, error=error)
    if result.outcome is not AttemptOutcome.SUCCESS:
        return result
    if reply.kind is ReplyKind.ENVELOPE:
        return replace(result, provider_reference=reply.report_id)
    if reply.kind is ReplyKind.REFUSED:
        why = f"the reply was refused ({reply.refused})"
    else:
        why = "the body is not a SOAP envelope"
    return replace(result, outcome=AttemptOutcome.RETRYABLE, error=f"HTTP {status} but {why}")


class PayloadMismatch(ConfigError):
    """The stored payload is not a SOAP report (for example extracted while the company used REST)."""


def soap_arguments(payload: str) -> dict[str, Any]:
    """The stored `mapping.workday.workday_soap_report` JSON -> zeep's keyword arguments for the operation.

    Values are parsed into date/Decimal here because zeep serialises but does not validate xsd:date/xsd:decimal."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise PayloadMismatch(f"stored payload is not JSON ({exc})") from None
    if isinstance(doc, dict) and "impact_report" in doc:
        raise PayloadMismatch(
            "stored payload is a Workday REST report but the company now uses SOAP "
            "(its protocol changed after extraction)"
        )
    try:
        report = doc["CSR_Impact_Report"]
        worker_id = report["Worker_Reference"]["ID"]
        activity = report["CSR_Activity"]
        return {
            "CSR_Impact_Report": {
                "External_Reference_ID": report["External_Reference_ID"],
                "Report_Date": date.fromisoformat(report["Report_Date"]),
                "Worker_Reference": {"ID": {"_value_1": worker_id["value"], "type": worker_id["type"]}},
                "CSR_Activity": {
                    "Activity_Type": activity["Activity_Type"],
                    "Value": Decimal(activity["Value"]),
                    "Unit_of_Measure": activity["Unit_of_Measure"],
                },
            }
        }
    except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
        raise PayloadMismatch(f"stored payload is not a Workday SOAP report ({type(exc).__name__}: {exc})") from None


class _OfflineTransport(Transport):
    """zeep here only builds envelopes: it never opens a connection or loads a document itself (its own transport
    would also log whole envelopes, passwords included, at DEBUG)."""

    def __init__(self) -> None:  # no super().__init__(): it would create a session nobody uses
        self.cache = None
        self.load_timeout = None
        self.operation_timeout = None
        self.session = None
        self._close_session = False
        self.logger = LOG

    def load(self, url: str) -> bytes:
        raise RuntimeError(f"refusing to load {url!r}: the Workday WSDL ships with the package")

    def post(self, address: str, message: bytes, headers: dict[str, str]) -> requests.Response:
        raise RuntimeError("envelopes are sent through connectors.http.exchange")

    def post_xml(self, address: str, envelope: etree._Element, headers: dict[str, str]) -> requests.Response:
        raise RuntimeError("envelopes are sent through connectors.http.exchange")


def _signed_client(username: str, password: str, digest: bool) -> Client:
    token = UsernameToken(username, password, use_digest=digest, zulu_timestamp=True)
    return Client(wsdl_document(), wsse=token, transport=_OfflineTransport(), settings=ZEEP_SETTINGS)


class WorkdaySoapConnector:
    provider = Provider.WORKDAY

    def __init__(
        self,
        *,
        endpoint: str,
        username: str,
        password: str,
        digest: bool,
        session: requests.Session,
        timeout: tuple[float, float],
        company_id: str,
    ) -> None:
        self.endpoint = endpoint
        self.company_id = company_id
        self.session = session
        self.timeout = timeout
        self.digest = digest
        self.redactor = Redactor(credentials=[(username, password)])
        self.client = _signed_client(username, password, digest)
        self.service = self.client.create_service(BINDING, endpoint)
        action = wsdl_document().bindings[BINDING].get(OPERATION).soapaction
        self.headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'}

    def __repr__(self) -> str:
        return f"WorkdaySoapConnector(endpoint={self.endpoint!r}, company_id={self.company_id!r})"

    # -- the interface -------------------------------------------------------------------------------------
    def prepare(self, delivery: OutboundDelivery) -> PreparedRequest:
        """The request `send` would make, with the password/digest/nonce masked (the secret is in the body)."""
        envelope = self.client.create_message(self.service, OPERATION, **soap_arguments(delivery.payload))
        request = self._request(envelope, delivery.delivery_id)
        return replace(request, body=masked_envelope(envelope, self.redactor).encode("utf-8"))

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        started = datetime.now(UTC)
        try:
            envelope = self.client.create_message(self.service, OPERATION, **soap_arguments(delivery.payload))
        except PayloadMismatch as exc:
            return AttemptResult(AttemptOutcome.CONFIG, started, datetime.now(UTC), error=str(exc))
        except ZeepError as exc:
            error = self.redactor.scrub(f"payload does not fit the WSDL: {exc}")
            return AttemptResult(AttemptOutcome.PERMANENT, started, datetime.now(UTC), error=error)
        result, _ = self._exchange(envelope, self._request(envelope, delivery.delivery_id))
        return result

    def check(self) -> ConnectivityResult:
        """Can these credentials authenticate? No SOAP request authenticates without submitting data, so the probe
        is a Submit_CSR_Impact_Report with no report in it: schema-invalid, it can never be stored.

        A fault naming the credentials, a Server fault or no SOAP answer fails the check. Any other answer (a
        validation fault, say) proves nothing by itself: a server that validates the body before the security
        header gives it to any password. So the same probe goes out once more as a user that cannot exist (a random
        name, so no real account is ever locked out): only when that one is refused differently have these
        credentials been checked and accepted. Otherwise the service is reachable and the credentials not proven."""
        ours, reply = self._probe(self.client)
        fault = reply.fault if reply is not None else None
        if fault is not None and (fault_outcome(fault) is AttemptOutcome.RETRYABLE or names_credentials(fault)):
            return self._checked(False, ours.error or "SOAP fault")
        if fault is None and ours.outcome is not AttemptOutcome.SUCCESS:
            return self._checked(False, ours.error or f"HTTP {ours.http_status}")
        answer = f"the empty probe was refused with {fault.describe()}" if fault else "the empty probe was accepted"
        stranger = _signed_client(f"impactin-probe-{secrets.token_hex(8)}", secrets.token_urlsafe(24), self.digest)
        control, control_reply = self._probe(stranger)
        other = control_reply.fault if control_reply is not None else None
        if other is None or fault_outcome(other) is AttemptOutcome.RETRYABLE:
            why = control.error or f"HTTP {control.http_status}, no fault"
            detail = f"{answer}; the same probe as an unknown user got no refusal to compare with ({why})"
            return self._checked(False, f"reachable; credentials not proven: {detail}", inconclusive=True)
        if fault is not None and (other.code, other.subcodes) == (fault.code, fault.subcodes):
            detail = f"{answer}, and so is an unknown user: this service checks the body before the credentials"
            return self._checked(False, f"reachable; credentials not proven: {detail}", inconclusive=True)
        return self._checked(True, f"authenticated: {answer}, while an unknown user is refused with {other.describe()}")

    def close(self) -> None:
        return None  # the session belongs to the factory

    # -- one exchange ----------------------------------------------------------------------------------------
    def _request(self, envelope: etree._Element, idempotency_key: str, **extra: str) -> PreparedRequest:
        headers = {**self.headers, **extra, "X-Idempotency-Key": idempotency_key}
        return PreparedRequest("POST", self.endpoint, headers, etree_to_string(envelope))

    def _exchange(self, envelope: etree._Element, request: PreparedRequest) -> tuple[AttemptResult, SoapReply | None]:
        audit = masked_envelope(envelope, self.redactor)
        result, response = exchange(self.session, request, timeout=self.timeout, redactor=self.redactor)
        result = replace(result, request_body=audit)
        if response is None:
            return result, None
        reply = read_reply(response.content)
        return classify_reply(result, reply, self.redactor), reply

    def _probe(self, client: Client) -> tuple[AttemptResult, SoapReply | None]:
        envelope = client.create_message(self.service, OPERATION, CSR_Impact_Report=xsd.SkipValue)
        key = f"{CHECK_KEY}-{self.company_id}"
        return self._exchange(envelope, self._request(envelope, key, **{"X-Impactin-Check": "1"}))

    def _checked(self, ok: bool, detail: str, *, inconclusive: bool = False) -> ConnectivityResult:
        return ConnectivityResult(
            self.provider.value, self.company_id, ok, detail, {"protocol": "soap"}, inconclusive=inconclusive
        )


def endpoint_for(api_url: str, tenant_id: str) -> str:
    return api_url + SERVICE_PATH.format(tenant=tenant_id)
