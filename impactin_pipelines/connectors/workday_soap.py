"""Workday over SOAP: zeep builds the `Submit_CSR_Impact_Report` envelope from the WSDL shipped in the package,
signs it with a WS-Security UsernameToken, and sends it through our pooled session and `connectors.http.exchange`.

Why a Transport subclass: zeep turns an HTTP 500/503 with an HTML body into `Fault('Unknown fault occured')` and
loses the status, and zeep's own transport logs whole envelopes (passwords included) at DEBUG. Ours sends through
`exchange`, so the status is classified the same way as every other provider, keeps the AttemptResult for the
connector, adds `X-Idempotency-Key`, and records the envelope with the password, digest and nonce masked.

Classification: a SOAP Client fault is permanent (`rejected`, faultstring in `last_error`); a Server fault, an
HTTP 5xx without a fault, or a non-XML error body keeps its status and is retried (Workday dedups on
`External_Reference_ID`, the event id, so a retry never double-counts).
"""

import copy
import functools
import json
import logging
import threading
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import requests
from lxml import etree
from zeep import Client, Settings, xsd
from zeep.exceptions import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, Fault, TransportError
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
from impactin_pipelines.connectors.http import exchange
from impactin_pipelines.connectors.retry import RETRYABLE_STATUSES
from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.domain.statuses import AttemptOutcome
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

LOG = logging.getLogger("impactin.workday")


@functools.cache
def wsdl_document() -> Document:
    """The WSDL, parsed once per process and shared by every company's client (it is read-only after parsing)."""
    document = Document(str(WSDL_PATH), Transport(), settings=ZEEP_SETTINGS)
    document.types.set_ns_prefix("wd", NAMESPACE)  # envelopes read like the guide's example: wd:...
    return document


def masked_envelope(envelope: etree._Element, redactor: Redactor) -> str:
    """The envelope as sent, for the audit trail: password or digest and nonce masked."""
    audit = copy.deepcopy(envelope)
    for element in audit.iter(*_MASKED_TAGS):
        element.text = MASK
    return redactor.scrub(etree_to_string(audit).decode("utf-8")) or ""


def fault_outcome(code: str | None) -> AttemptOutcome:
    """`SOAP-ENV:Server...` / `Receiver` faults are the provider's trouble (retry); every other fault (Client,
    validation, authentication, WS-Security's `wsse:FailedAuthentication`) is about what we sent."""
    local = (code or "").rpartition(":")[2]
    return AttemptOutcome.RETRYABLE if local.split(".")[0] in ("Server", "Receiver") else AttemptOutcome.PERMANENT


def is_validation_fault(code: str | None) -> bool:
    return "validation" in (code or "").lower()


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


@dataclass
class _Call:
    """One operation call on one thread: what went out, and how the exchange came out."""

    idempotency_key: str
    extra_headers: dict[str, str]
    request_body: str | None = None
    result: AttemptResult | None = None


class _NoResponse(Exception):
    """The exchange never got an HTTP response (timeout, reset); its classified result is on the call."""


class ExchangeTransport(Transport):
    """zeep Transport over `connectors.http.exchange` (see the module docstring for why)."""

    def __init__(self, session: requests.Session, *, operation_timeout: tuple[float, float], redactor: Redactor):
        # Deliberately not super().__init__(): it would mount file:// on, and rewrite the User-Agent of, the
        # session every Workday company shares.
        self.cache = None
        self.load_timeout = operation_timeout[0]
        self.operation_timeout = operation_timeout
        self.session = session
        self._close_session = False
        self.logger = LOG
        self.redactor = redactor
        self._local = threading.local()

    def begin(self, call: _Call) -> None:
        self._local.call = call

    def end(self) -> None:
        self._local.call = None

    def post_xml(self, address: str, envelope: etree._Element, headers: dict[str, str]) -> requests.Response:
        call: _Call = self._local.call
        call.request_body = masked_envelope(envelope, self.redactor)
        request = PreparedRequest(
            "POST",
            address,
            {**headers, **call.extra_headers, "X-Idempotency-Key": call.idempotency_key},
            etree_to_string(envelope),
        )
        call.result, response = exchange(self.session, request, timeout=self.operation_timeout, redactor=self.redactor)
        if response is None:
            raise _NoResponse
        return response

    def post(self, address: str, message: bytes, headers: dict[str, str]) -> requests.Response:
        raise NotImplementedError("envelopes go through post_xml")

    def load(self, url: str) -> bytes:
        raise RuntimeError(f"refusing to load {url!r}: the Workday WSDL ships with the package")


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
        self.redactor = Redactor(credentials=[(username, password)])
        self.transport = ExchangeTransport(session, operation_timeout=timeout, redactor=self.redactor)
        self.client = Client(
            wsdl_document(),
            wsse=UsernameToken(username, password, use_digest=digest, zulu_timestamp=True),
            transport=self.transport,
            settings=ZEEP_SETTINGS,
        )
        self.service = self.client.create_service(BINDING, endpoint)

    def __repr__(self) -> str:
        return f"WorkdaySoapConnector(endpoint={self.endpoint!r}, company_id={self.company_id!r})"

    # -- the interface -------------------------------------------------------------------------------------
    def prepare(self, delivery: OutboundDelivery) -> PreparedRequest:
        """The envelope `send` would post, with the password/digest/nonce masked (the secret is in the body)."""
        envelope = self.client.create_message(self.service, OPERATION, **soap_arguments(delivery.payload))
        return PreparedRequest(
            "POST",
            self.endpoint,
            {"Content-Type": "text/xml; charset=utf-8", "X-Idempotency-Key": delivery.delivery_id},
            masked_envelope(envelope, self.redactor).encode("utf-8"),
        )

    def send(self, delivery: OutboundDelivery) -> AttemptResult:
        started = datetime.now(UTC)
        try:
            arguments = soap_arguments(delivery.payload)
        except PayloadMismatch as exc:
            return AttemptResult(AttemptOutcome.CONFIG, started, datetime.now(UTC), error=str(exc))
        result, _ = self._call(_Call(delivery.delivery_id, {}), arguments, started)
        return result

    def check(self) -> ConnectivityResult:
        """The guide has no SOAP request that authenticates without submitting data, so we send a
        Submit_CSR_Impact_Report with no report in it: schema-invalid, so it can never be stored. Workday checks the
        UsernameToken before the body, so a *validation* fault proves the credentials were accepted, while a
        security fault (or anything else) means they were not."""
        started = datetime.now(UTC)
        call = _Call(f"{CHECK_KEY}-{self.company_id}", {"X-Impactin-Check": "1"})
        result, fault = self._call(call, {"CSR_Impact_Report": xsd.SkipValue}, started)
        if fault is not None and is_validation_fault(fault.code):
            ok, detail = True, f"authenticated (probe refused for its content: {fault.code})"
        elif result.outcome is AttemptOutcome.SUCCESS:
            ok, detail = True, f"HTTP {result.http_status} (empty probe accepted; it carried no impact data)"
        else:
            ok, detail = False, result.error or f"HTTP {result.http_status}"
        return ConnectivityResult(self.provider.value, self.company_id, ok, detail, {"protocol": "soap"})

    def close(self) -> None:
        return None  # the session belongs to the factory

    # -- one call --------------------------------------------------------------------------------------------
    def _call(self, call: _Call, arguments: dict[str, Any], started: datetime) -> tuple[AttemptResult, Fault | None]:
        self.transport.begin(call)
        try:
            getattr(self.service, OPERATION)(**arguments)
            return self._finish(call), None
        except _NoResponse:
            return self._finish(call), None
        except Fault as fault:
            if fault.code is None:  # zeep's "Unknown fault": a non-fault error body; the HTTP status decides
                return self._finish(call), None
            return self._fault(call, fault), fault
        except TransportError:  # non-XML or empty body: the HTTP status decides
            return self._finish(call, unreadable="the body is not a SOAP envelope"), None
        except (DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden) as exc:
            return self._finish(call, unreadable=f"the reply was refused ({type(exc).__name__})"), None
        except ZeepError as exc:
            if call.result is None:  # the envelope could not even be built from the payload
                error = self.redactor.scrub(f"payload does not fit the WSDL: {exc}")
                return AttemptResult(AttemptOutcome.PERMANENT, started, datetime.now(UTC), error=error), None
            # a reply we could not read (well-formed XML that is no SOAP envelope, say a proxy's XHTML page): the
            # HTTP status decides, and a 2xx is retried like any unreadable one
            return self._finish(call, unreadable=f"the reply is not a SOAP envelope ({type(exc).__name__})"), None
        finally:
            self.transport.end()

    def _finish(self, call: _Call, *, unreadable: str | None = None) -> AttemptResult:
        """The exchange's own classification (by HTTP status), with the masked envelope attached. A 2xx whose
        body we cannot read is retried: we cannot tell it was stored, and External_Reference_ID makes it safe."""
        assert call.result is not None
        result = replace(call.result, request_body=call.request_body)
        if unreadable and result.outcome is AttemptOutcome.SUCCESS:
            error = f"HTTP {result.http_status} but {unreadable}"
            result = replace(result, outcome=AttemptOutcome.RETRYABLE, error=error)
        return result

    def _fault(self, call: _Call, fault: Fault) -> AttemptResult:
        base = call.result
        assert base is not None
        status = f"HTTP {base.http_status} " if base.http_status else ""
        error = self.redactor.scrub(f"{status}SOAP fault {fault.code}: {fault.message}")
        # A gateway's 429/502/503/504 speaks for itself whatever the body; SOAP puts every fault on a 500.
        gateway = base.http_status in RETRYABLE_STATUSES and base.http_status != 500
        outcome = base.outcome if gateway else fault_outcome(fault.code)
        return replace(base, outcome=outcome, error=error, request_body=call.request_body)


def endpoint_for(api_url: str, tenant_id: str) -> str:
    return api_url + SERVICE_PATH.format(tenant=tenant_id)
