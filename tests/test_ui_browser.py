"""The Dagster UI as an operator sees it after `impactin demo`, in a real headless Chromium.

The demo runs into a temporary state folder (SQLite warehouse and Dagster home), the real `dagster-webserver` serves
the code location on that instance, and Playwright drives Debian's `chromium` (Playwright downloads no browser
here; `.ci/run` installs the package when it is missing). Screenshots land in `.impactin/screenshots/`; two of them
illustrate docs/operations.md (copied by hand to docs/images/ when the UI changes).

`EXPECTED` is the one place that says what the operator should see: adapt it when the demo or the assets change.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from playwright.sync_api import expect

from impactin_pipelines.store.engine import make_engine
from impactin_pipelines.store.schema import impact_deliveries
from tests.cli_support import IMPACTIN

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / ".impactin" / "screenshots"
CHROMIUM = os.environ.get("IMPACTIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DAGSTER = [sys.executable, "-m", "dagster"]
WEBSERVER = [sys.executable, "-m", "dagster_webserver"]
UI_TIMEOUT_MS = 60_000  # each wait for the page; the whole test is bounded by the steps' own timeouts


@dataclass(frozen=True)
class Expected:
    assets: tuple[str, ...]  # on the global asset graph
    partition: tuple[str, str]  # (company, provider): a delivery partition the demo delivered
    partition_metadata: tuple[str, ...]  # keys of that partition's materialization metadata
    stats_plots: tuple[str, ...]  # numeric metadata of delivery_stats, each a plot
    checks: dict[str, set[str]]  # asset checks on impact_deliveries -> the results the UI may show after the demo
    # False while `impactin demo` does not materialise delivery_stats itself: the test then runs it once, through
    # the same instance, before the UI opens (what the stats sensor would do under `dagster dev`).
    demo_materialises_stats: bool = True


EXPECTED = Expected(
    assets=("impact_outbox", "impact_deliveries", "delivery_stats", "delivery_reconciliation", "provider_integrations"),
    partition=("acme", "benevity"),
    # A healthy partition carries its run's summary; only partitions needing attention get counts of their own.
    partition_metadata=("run_delivered", "run_retrying", "run_failed", "run_attempts", "partitions_needing_attention"),
    stats_plots=("total_successful", "total_failed", "success_rate", "latency_p95_s"),
    checks={
        "no_stuck_deliveries": {"Succeeded"},
        "delivery_failure_rate": {"Succeeded", "Warning", "Failed"},  # the demo fails a few rows on purpose
        "delivery_ledger_balances": {"Succeeded"},
        "no_retrying_past_cap": {"Succeeded"},
        "circuits_closed": {"Succeeded"},
        "delivery_confirmations_agree": {"Succeeded", "Warning"},
    },
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class DemoUi:
    url: str
    state: Path


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory) -> Iterator[DemoUi]:
    """`impactin demo` into a fresh state folder, then the webserver on its Dagster instance."""
    state = tmp_path_factory.mktemp("ui") / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENEVITY_", "GOODERA_", "WORKDAY_", "DAGSTER_"))}
    env.pop("IMPACTIN_WAREHOUSE_URL", None)
    env.update(IMPACTIN_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    env.setdefault("IMPACTIN_ENCRYPTION_KEY", "n3SsmO2cM9e1Xg7Hcm0qgW9yGx5dB3wWcwJ2Y2pS6gY=")
    demo = subprocess.run(
        [*IMPACTIN, "demo", "--events-per-company", "4"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    env["DAGSTER_HOME"] = str(state / "dagster_home")
    if not EXPECTED.demo_materialises_stats:
        stats = subprocess.run(
            [*DAGSTER, "job", "execute", "-j", "delivery_stats_job", "-m", "impactin_pipelines.definitions"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert stats.returncode == 0, stats.stdout[-2000:] + stats.stderr[-4000:]
    port = _free_port()
    webserver = subprocess.Popen(
        [*WEBSERVER, "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/server_info", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert webserver.poll() is None, "dagster-webserver exited"
            assert time.monotonic() < deadline, "dagster-webserver did not come up within 120 s"
            time.sleep(0.5)
        yield DemoUi(url, state)
    finally:
        _stop(webserver)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    # The UI greets a new browser on localhost with a "join the community" dialog; an operator dismisses it once.
    context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
    try:
        yield context.new_page()
    finally:
        context.close()


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # let the last render settle (bounded)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _visible(page: Any, text: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text, exact=True).first.wait_for(state="visible")
    except PlaywrightTimeout:
        raise AssertionError(f"{text!r} not shown within {UI_TIMEOUT_MS / 1000:g} s on {page.url}") from None


def _asset_graph(demo_ui: DemoUi, page: Any) -> None:
    page.goto(f"{demo_ui.url}/asset-groups")
    for asset in EXPECTED.assets:
        _visible(page, asset)
    expect(page.get_by_text(re.compile(r"^Loading"))).to_have_count(0, timeout=UI_TIMEOUT_MS)  # every node filled
    _shot(page, "asset-graph")


def _delivery_partition(demo_ui: DemoUi, page: Any) -> None:
    company, provider = EXPECTED.partition
    engine = make_engine(f"sqlite:///{demo_ui.state / 'warehouse.db'}")
    try:
        with engine.connect() as conn:
            delivered = conn.execute(
                # the demo's one run covers every partition, and its summary is on each of them
                sa.select(sa.func.count()).where(impact_deliveries.c.status == "success")
            ).scalar_one()
    finally:
        engine.dispose()
    assert delivered > 0, "the demo delivered nothing for the expected partition"
    page.goto(f"{demo_ui.url}/assets/impact_deliveries?view=partitions&partition={company}|{provider}")
    for key in EXPECTED.partition_metadata:
        _visible(page, key)
    row = page.locator("tr", has=page.get_by_text("run_delivered", exact=True)).first
    assert row.inner_text().split()[-1] == str(delivered), row.inner_text()
    _shot(page, "delivery-partition")


def _stats_plots(demo_ui: DemoUi, page: Any) -> None:
    page.goto(f"{demo_ui.url}/assets/delivery_stats")
    page.get_by_role("button", name="Plots").first.click()  # the metadata table's Table | Plots toggle
    for plot in EXPECTED.stats_plots:
        _visible(page, plot)
    expect(page.locator("canvas")).not_to_have_count(0, timeout=UI_TIMEOUT_MS)  # the charts are drawn
    page.get_by_text("Metadata", exact=True).first.scroll_into_view_if_needed()
    _shot(page, "stats-plots")


def _checks(demo_ui: DemoUi, page: Any) -> None:
    page.goto(f"{demo_ui.url}/assets/impact_deliveries?view=checks")
    _visible(page, f"Checks ({len(EXPECTED.checks)})")
    for check in EXPECTED.checks:
        _visible(page, check)
    expect(page.get_by_text("Not evaluated")).to_have_count(0, timeout=UI_TIMEOUT_MS)
    text = page.inner_text("body")
    for check, allowed in EXPECTED.checks.items():
        shown = re.search(rf"{check}\s+(?:{check}\s+)?([A-Z][a-z]+(?: [a-z]+)?)", text)
        assert shown is not None and shown.group(1) in allowed, (check, shown and shown.group(1), allowed)
    _shot(page, "delivery-checks")


def test_an_operator_sees_the_demo_in_the_ui(demo_ui, page):
    """One test, so that `pytest -n 2` runs the demo and the webserver once: every page is checked, every failure
    reported (with a screenshot `failed-<page>.png`)."""
    from playwright.sync_api import Error as PlaywrightError

    failures = []
    for check in (_asset_graph, _delivery_partition, _stats_plots, _checks):
        try:
            check(demo_ui, page)
        except (AssertionError, PlaywrightError) as exc:
            failures.append(f"{check.__name__.strip('_')}: {str(exc).splitlines()[0] if str(exc) else type(exc)}")
            _shot(page, f"failed-{check.__name__.strip('_')}")
    assert not failures, "\n".join(failures)
