"""The sandbox's `latency_ms` is a provider's response time: the provider acts on a request when it arrives, and
its answer leaves `latency_ms` after that, its own work counted in it (not added on top, which would measure a
client against a slower provider than configured)."""

import threading
import time

import requests


def test_the_sandbox_acts_on_arrival_and_answers_after_its_latency(sandbox) -> None:
    fake = sandbox.providers["benevity"]
    fake.configure({"latency_ms": 500})
    times: dict[str, float] = {}

    def post() -> None:
        times["sent"] = time.monotonic()
        requests.post(f"{sandbox.url}/benevity/api/v1/impact-events", data=b"{}", timeout=10)
        times["answered"] = time.monotonic()

    sender = threading.Thread(target=post)
    sender.start()
    deadline = time.monotonic() + 10
    while not fake.log and time.monotonic() < deadline:
        time.sleep(0.005)
    times["stored"] = time.monotonic()
    sender.join(timeout=10)
    assert fake.log, "the request never reached the provider"
    assert times["answered"] - times["sent"] >= 0.5, f"answered before the configured latency of 0.5 s: {times}"
    # acted on when it arrived: its record is there most of the latency before the answer leaves
    assert times["answered"] - times["stored"] >= 0.25, f"the provider acted only when it answered: {times}"


def test_a_fault_is_answered_after_the_latency_too(sandbox) -> None:
    fake = sandbox.providers["benevity"]
    fake.configure({"latency_ms": 300, "fail_next": [{"status": 503}]})
    started = time.monotonic()
    response = requests.post(f"{sandbox.url}/benevity/api/v1/impact-events", data=b"{}", timeout=10)
    assert response.status_code == 503
    assert time.monotonic() - started >= 0.3
