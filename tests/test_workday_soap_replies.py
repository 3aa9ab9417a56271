"""Workday SOAP replies as servers we did not write answer them, each through the real connector over loopback and
the delivery pipeline, on both backends.

The request envelope is fixed by the integration guide; the reply is not. These bodies are written by hand, the way
other SOAP stacks (Workday itself, JAX-WS, Axis, .NET, spyne, SOAP 1.2 servers) might answer: another id element,
unknown elements, extra namespaces and prefixes, a SOAP header, other encodings and content types. Any well-formed
SOAP envelope without a Fault on a 2xx is a success; faults are read whatever their detail holds; a 2xx that is no
SOAP envelope is retried.
"""

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.workday.soap_reply import ReplyKind, read_reply
from impactin_pipelines.services.extract import extract
from tests.support import add_events, add_integration, attempts, deliver, events, factory_for, rows

S11 = "http://schemas.xmlsoap.org/soap/envelope/"
S12 = "http://www.w3.org/2003/05/soap-envelope"
REPORT = "{report_id}"  # the fake replaces it with the id it stored the report under


@dataclass(frozen=True)
class Reply:
    body: str
    content_type: str = "text/xml; charset=utf-8"
    status: int = 200
    encoding: str = "utf-8"
    report_id: str | None = None  # what the connector should recognise as the report id (REPORT: the stored id)
    shows: str | None = None  # text the stored provider_response must contain, decoded as the reply declares


SUCCESSES: dict[str, Reply] = {
    # Workday's own style: a reference with several typed ids; the WID is the report's id.
    "workday_reference_with_several_ids": Reply(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="{S11}">
  <env:Body>
    <wd:Submit_CSR_Impact_Report_Response xmlns:wd="urn:com.workday/bsvc" wd:version="v44.2">
      <wd:CSR_Impact_Report_Reference wd:Descriptor="CSR Impact Report {{event_id}}">
        <wd:ID wd:type="CSR_Impact_Report_ID">CSR-{{event_id}}</wd:ID>
        <wd:ID wd:type="WID">{REPORT}</wd:ID>
      </wd:CSR_Impact_Report_Reference>
    </wd:Submit_CSR_Impact_Report_Response>
  </env:Body>
</env:Envelope>""",
        report_id=REPORT,
    ),
    "another_id_element": Reply(
        f'<soapenv:Envelope xmlns:soapenv="{S11}" xmlns:bsvc="urn:com.workday/bsvc"><soapenv:Body>'
        f"<bsvc:Submit_CSR_Impact_Report_Response><bsvc:CSR_Impact_Report_ID>{REPORT}</bsvc:CSR_Impact_Report_ID>"
        "</bsvc:Submit_CSR_Impact_Report_Response></soapenv:Body></soapenv:Envelope>",
        report_id=REPORT,
    ),
    "response_element_without_children": Reply(
        f'<soapenv:Envelope xmlns:soapenv="{S11}"><soapenv:Body>'
        '<wd:Submit_CSR_Impact_Report_Response xmlns:wd="urn:com.workday/bsvc"/>'
        "</soapenv:Body></soapenv:Envelope>"
    ),
    "empty_body": Reply(f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{S11}"><SOAP-ENV:Body/></SOAP-ENV:Envelope>'),
    # JAX-WS style prefixes, unknown elements in our namespace and another, our own key echoed back.
    "unknown_elements_and_namespaces": Reply(
        f"""<S:Envelope xmlns:S="{S11}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<S:Body>
<ns2:Submit_CSR_Impact_Report_Response xmlns:ns2="urn:com.workday/bsvc" xmlns:ns3="urn:example:audit">
<ns2:Echo><ns2:External_Reference_ID>{{event_id}}</ns2:External_Reference_ID></ns2:Echo>
<ns2:Status xsi:type="ns2:Unknown_Status_Type">Accepted</ns2:Status>
<ns3:Audit><ns3:Received_At>2025-11-14T10:00:01Z</ns3:Received_At><ns3:Node>wd5-prod-17</ns3:Node></ns3:Audit>
<ns2:Report_ID>{REPORT}</ns2:Report_ID>
</ns2:Submit_CSR_Impact_Report_Response>
</S:Body>
</S:Envelope>""",
        report_id=REPORT,
        shows="wd5-prod-17",
    ),
    # A header (WS-Addressing, a WS-Security timestamp); the body only echoes the worker: no report id.
    "soap_header_and_a_worker_echo": Reply(
        f"""<soap:Envelope xmlns:soap="{S11}" xmlns:wsa="http://www.w3.org/2005/08/addressing"
    xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">
  <soap:Header>
    <wsa:Action soap:mustUnderstand="1">urn:com.workday/bsvc/Submit_CSR_Impact_ReportResponse</wsa:Action>
    <wsa:MessageID>urn:uuid:5f1d0b7e-3c1a-4d7e-9a51-0c6f3f1b2a10</wsa:MessageID>
    <wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">
      <wsu:Timestamp><wsu:Created>2025-11-14T10:00:01Z</wsu:Created></wsu:Timestamp>
    </wsse:Security>
  </soap:Header>
  <soap:Body>
    <wd:Submit_CSR_Impact_Report_Response xmlns:wd="urn:com.workday/bsvc">
      <wd:Worker_Reference><wd:ID wd:type="Employee_ID">user_1</wd:ID></wd:Worker_Reference>
    </wd:Submit_CSR_Impact_Report_Response>
  </soap:Body>
</soap:Envelope>"""
    ),
    "latin1_declaration_and_charset": Reply(
        f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<env:Envelope xmlns:env="{S11}"><env:Body>
<wd:Submit_CSR_Impact_Report_Response xmlns:wd="urn:com.workday/bsvc">
<wd:Message>Rapport reçu et enregistré</wd:Message></wd:Submit_CSR_Impact_Report_Response>
</env:Body></env:Envelope>""",
        content_type="text/xml; charset=ISO-8859-1",
        encoding="latin-1",
        shows="Rapport reçu et enregistré",
    ),
    "utf16_with_a_byte_order_mark": Reply(
        f"""<?xml version="1.0" encoding="UTF-16"?>
<s:Envelope xmlns:s="{S11}"><s:Body>
<Submit_CSR_Impact_Report_Response xmlns="urn:com.workday/bsvc"><CSR_Impact_Report_ID>{REPORT}</CSR_Impact_Report_ID>
</Submit_CSR_Impact_Report_Response></s:Body></s:Envelope>""",
        content_type="text/xml; charset=utf-16",
        encoding="utf-16",
        report_id=REPORT,
    ),
    # .NET-style default namespaces and camelCase names.
    "default_namespaces_and_camel_case": Reply(
        f'<Envelope xmlns="{S11}"><Body><submitCsrImpactReportResponse xmlns="urn:example:csr">'
        f"<accepted>true</accepted><reportId>{REPORT}</reportId></submitCsrImpactReportResponse></Body></Envelope>",
        report_id=REPORT,
    ),
    "soap12_content_type_on_a_soap11_envelope": Reply(
        f'<soapenv:Envelope xmlns:soapenv="{S11}"><soapenv:Body><Result xmlns="urn:example">OK</Result>'
        "</soapenv:Body></soapenv:Envelope>",
        content_type='application/soap+xml; charset=utf-8; action="urn:com.workday/bsvc/Submit_CSR_Impact_Report"',
    ),
    "soap12_envelope": Reply(
        f'<?xml version="1.0" encoding="utf-8"?><env:Envelope xmlns:env="{S12}"><env:Header/><env:Body>'
        '<m:Submit_CSR_Impact_Report_Response xmlns:m="urn:com.workday/bsvc">'
        f'<m:CSR_Impact_Report_Reference><m:ID m:type="WID">{REPORT}</m:ID></m:CSR_Impact_Report_Reference>'
        "</m:Submit_CSR_Impact_Report_Response></env:Body></env:Envelope>",
        content_type="application/soap+xml; charset=utf-8",
        report_id=REPORT,
    ),
    # 202, and text/xml without a charset: XML's own default (UTF-8) holds, not HTTP's ISO-8859-1.
    "http_202_text_xml_without_charset": Reply(
        f'<soap:Envelope xmlns:soap="{S11}"><soap:Body><ack xmlns="urn:example">Empfangsbestätigung</ack>'
        "</soap:Body></soap:Envelope>",
        content_type="text/xml",
        status=202,
        shows="Empfangsbestätigung",
    ),
    "comments_and_processing_instructions": Reply(
        f"""<?xml version="1.0"?>
<!-- generated by an ESB in front of the tenant -->
<?esb-route node="7"?>
<soap:Envelope xmlns:soap="{S11}">
  <!-- routed -->
  <soap:Body><wd:Submit_CSR_Impact_Report_Response xmlns:wd="urn:com.workday/bsvc"><!-- ok -->
  </wd:Submit_CSR_Impact_Report_Response></soap:Body>
</soap:Envelope>"""
    ),
    "unqualified_response_element": Reply(
        f'<soap:Envelope xmlns:soap="{S11}"><soap:Body><Submit_CSR_Impact_Report_Response>'
        "<Result>stored</Result></Submit_CSR_Impact_Report_Response></soap:Body></soap:Envelope>",
        shows="stored",
    ),
}


def _fault11(code: str, string: str, detail: str = "", *, qualified: bool = False) -> str:
    p = "soap:" if qualified else ""
    return (
        f'<soap:Envelope xmlns:soap="{S11}"><soap:Body><soap:Fault>'
        f"<{p}faultcode>{code}</{p}faultcode><{p}faultstring>{string}</{p}faultstring>{detail}"
        "</soap:Fault></soap:Body></soap:Envelope>"
    )


def _fault12(code: str, subcode: str, reason: str) -> str:
    return (
        f'<env:Envelope xmlns:env="{S12}" xmlns:wd="urn:com.workday/bsvc"><env:Body><env:Fault>'
        f"<env:Code><env:Value>{code}</env:Value><env:Subcode><env:Value>{subcode}</env:Value></env:Subcode></env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{reason}</env:Text></env:Reason>'
        "<env:Detail><wd:Trace>t-42</wd:Trace></env:Detail></env:Fault></env:Body></env:Envelope>"
    )


@dataclass(frozen=True)
class FaultReply:
    body: str
    outcome: str  # of the first attempt: "retryable" (then delivered) or "permanent" (failed/rejected)
    error: str  # the whole error of the first attempt
    status: int = 500
    content_type: str = "text/xml; charset=utf-8"


FAULTS: dict[str, FaultReply] = {
    "workday_validation_fault": FaultReply(
        _fault11(
            "SOAP-ENV:Client.validationError",
            "Validation error occurred. Invalid ID value",
            '<detail><wd:Validation_Fault xmlns:wd="urn:com.workday/bsvc"><wd:Validation_Error>'
            "<wd:Message>Invalid ID value</wd:Message><wd:Detail_Message>Employee_ID user_1</wd:Detail_Message>"
            "<wd:Xpath>/wd:Submit_CSR_Impact_Report[1]</wd:Xpath></wd:Validation_Error></wd:Validation_Fault></detail>",
        ),
        "permanent",
        "HTTP 500 SOAP fault SOAP-ENV:Client.validationError: Validation error occurred. Invalid ID value",
    ),
    "qualified_fault_children": FaultReply(
        _fault11("soap:Client", "Worker not found", qualified=True),
        "permanent",
        "HTTP 500 SOAP fault soap:Client: Worker not found",
    ),
    "server_fault_with_a_detail_of_unknown_shape": FaultReply(
        _fault11(
            "soapenv:Server",
            "Database unavailable",
            '<detail><ns1:exceptionInfo xmlns:ns1="http://example.org/axis" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ns1:Unheard_Of_Type">'
            "<ns1:stackTrace>java.sql.SQLException: pool exhausted</ns1:stackTrace><hostname>app7</hostname>"
            "</ns1:exceptionInfo></detail>",
        ),
        "retryable",
        "HTTP 500 SOAP fault soapenv:Server: Database unavailable",
    ),
    "client_fault_with_a_detail_of_unknown_shape": FaultReply(
        _fault11(
            "s:Client",
            "Report refused",
            '<detail><x:Problems xmlns:x="urn:example:x"><x:Problem code="42">Value too large</x:Problem>'
            "</x:Problems></detail>",
        ),
        "permanent",
        "HTTP 500 SOAP fault s:Client: Report refused",
    ),
    "fault_with_only_a_detail": FaultReply(
        _fault11("SOAP-ENV:Client", "", "<detail><message>Unit_of_Measure is not allowed</message></detail>"),
        "permanent",
        "HTTP 500 SOAP fault SOAP-ENV:Client: Unit_of_Measure is not allowed",
    ),
    "soap12_sender_fault": FaultReply(
        _fault12("env:Sender", "wd:validationError", "Report_Date is in the future"),
        "permanent",
        "HTTP 500 SOAP fault env:Sender (wd:validationError): Report_Date is in the future",
        content_type="application/soap+xml; charset=utf-8",
    ),
    "soap12_receiver_fault": FaultReply(
        _fault12("env:Receiver", "wd:processingError", "Try again later"),
        "retryable",
        "HTTP 500 SOAP fault env:Receiver (wd:processingError): Try again later",
        content_type="application/soap+xml; charset=utf-8",
    ),
    "client_fault_on_http_200": FaultReply(
        _fault11("SOAP-ENV:Client.validationError", "Activity_Type is not known"),
        "permanent",
        "HTTP 200 SOAP fault SOAP-ENV:Client.validationError: Activity_Type is not known",
        status=200,
    ),
    "fault_without_a_code_on_500": FaultReply(
        f'<soap:Envelope xmlns:soap="{S11}"><soap:Body><soap:Fault><faultstring>overloaded</faultstring>'
        "</soap:Fault></soap:Body></soap:Envelope>",
        "retryable",
        "HTTP 500 SOAP fault without a faultcode: overloaded",
    ),
}

NOT_ENVELOPES: dict[str, dict[str, Any]] = {
    "html_page": {"body": "<html><body><h1>Sign in</h1></body></html>", "content_type": "text/html"},
    "xhtml_page_as_text_xml": {
        "body": '<html xmlns="http://www.w3.org/1999/xhtml"><body><p>Portal</p></body></html>',
        "content_type": "text/xml",
    },
    "envelope_without_a_body": {"body": f'<soap:Envelope xmlns:soap="{S11}"><soap:Header/></soap:Envelope>'},
    "cut_off_xml": {"body": f'<soap:Envelope xmlns:soap="{S11}"><soap:Body><wd:Submit_CSR_Imp'},
    "empty": {"body": ""},
}


def _one_report(engine) -> None:
    add_integration(engine, "acme", "workday")
    add_events(engine, events("acme", 1))
    extract(engine, "acme", Provider.WORKDAY)


@pytest.mark.parametrize("name", SUCCESSES)
def test_any_soap_envelope_without_a_fault_on_a_2xx_is_a_success(engine, sandbox, caplog, name: str) -> None:
    reply = SUCCESSES[name]
    _one_report(engine)
    workday = sandbox.providers["workday"]
    workday.configure(
        {
            "soap_reply": {
                "body": reply.body,
                "status": reply.status,
                "content_type": reply.content_type,
                "encoding": reply.encoding,
            }
        }
    )
    caplog.set_level(logging.INFO, logger="impactin.delivery")
    deliver(engine, factory_for(engine, sandbox), "workday")

    [row] = rows(engine)
    [attempt] = attempts(engine, row["delivery_id"])
    assert (row["status"], row["attempt_count"], row["last_error"]) == ("success", 1, None), attempt["error"]
    assert (attempt["outcome"], attempt["http_status"]) == ("success", reply.status)
    [stored] = workday.snapshot()["accepted"]
    expected_body = reply.body.replace("{report_id}", stored["id"]).replace("{event_id}", stored["event_id"])
    assert row["provider_response"] == expected_body  # kept as received, decoded as the reply declares
    if reply.shows:
        assert reply.shows in row["provider_response"]
    expected_id = stored["id"] if reply.report_id == REPORT else None
    [line] = [r for r in caplog.records if r.name == "impactin.delivery" and getattr(r, "status", None) == "success"]
    assert getattr(line, "providerReference", None) == expected_id
    assert (f"providerReference={expected_id}" in line.getMessage()) is (expected_id is not None)


@pytest.mark.parametrize("name", FAULTS)
def test_faults_are_read_whatever_their_shape(engine, sandbox, name: str) -> None:
    fault = FAULTS[name]
    _one_report(engine)
    workday = sandbox.providers["workday"]
    workday.configure({"fail_next": {"status": fault.status, "body": fault.body, "content_type": fault.content_type}})
    deliver(engine, factory_for(engine, sandbox), "workday")

    [row] = rows(engine)
    first, *rest = attempts(engine, row["delivery_id"])
    assert (first["outcome"], first["http_status"], first["error"]) == (fault.outcome, fault.status, fault.error)
    if fault.outcome == "permanent":
        assert (row["status"], row["error_kind"], row["last_error"]) == ("failed", "rejected", fault.error)
        assert rest == [] and workday.snapshot()["accepted"] == []
    else:
        assert row["status"] == "success" and [a["outcome"] for a in rest] == ["success"]
        assert len(workday.snapshot()["accepted"]) == 1


@pytest.mark.parametrize("name", NOT_ENVELOPES)
def test_a_2xx_that_is_no_soap_envelope_is_retried(engine, sandbox, name: str) -> None:
    _one_report(engine)
    workday = sandbox.providers["workday"]
    spec = {"content_type": "text/xml; charset=utf-8", **NOT_ENVELOPES[name]}
    workday.configure({"fail_next": {"status": 200, **spec}})
    deliver(engine, factory_for(engine, sandbox), "workday")

    [row] = rows(engine)
    first, second = attempts(engine, row["delivery_id"])
    assert (first["outcome"], first["http_status"]) == ("retryable", 200)
    if spec["content_type"] == "text/html":
        assert first["error"].startswith("HTTP 200 with an HTML page instead of an API response")
    else:
        assert first["error"] == "HTTP 200 but the body is not a SOAP envelope"
    assert (row["status"], second["outcome"]) == ("success", "success")
    assert len(workday.snapshot()["accepted"]) == 1


@pytest.mark.parametrize(
    "inner, expected",
    [
        ('<wd:ID wd:type="Other_ID">o-1</wd:ID><wd:ID wd:type="WID">w-1</wd:ID>', "w-1"),
        ("<wd:External_Reference_ID>evt_1</wd:External_Reference_ID><wd:Report_Id>r-1</wd:Report_Id>", "r-1"),
        ('<wd:Worker_Reference><wd:ID wd:type="WID">worker-wid</wd:ID></wd:Worker_Reference>', None),
        ('<wd:Worker_ID>u-1</wd:Worker_ID><wd:ID wd:type="Employee_ID">u-1</wd:ID>', None),
        ("<wd:Reference><wd:ID/></wd:Reference><wd:Status>Accepted</wd:Status>", None),
    ],
)
def test_the_report_id_is_only_what_looks_like_one(inner: str, expected: str | None) -> None:
    namespaces = f'xmlns:e="{S11}" xmlns:wd="urn:com.workday/bsvc"'
    body = f"<e:Envelope {namespaces}><e:Body><wd:R>{inner}</wd:R></e:Body></e:Envelope>"
    reply = read_reply(body.encode())
    assert (reply.kind, reply.report_id) == (ReplyKind.ENVELOPE, expected)
