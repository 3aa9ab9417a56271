"""Sample companies, integrations and events for the demo: deterministic, with a few bad events on purpose."""

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from impactin_pipelines.store.schema import company_integrations, impact_events

COMPANIES = ("acme", "globex", "initech", "umbrella")
INTEGRATIONS: dict[str, tuple[str, ...]] = {
    "acme": ("benevity", "goodera"),
    "globex": ("benevity", "goodera"),
    "initech": ("benevity", "workday"),
    "umbrella": ("benevity", "workday"),
}
SETTINGS: dict[tuple[str, str], dict[str, Any]] = {("umbrella", "workday"): {"protocol": "rest"}}  # initech: SOAP
EVENT_TYPES = (
    ("volunteer_hours", "hours"),
    ("donation", "usd"),
    ("course_completion", "courses"),
    ("mentoring_session", "hours"),
)
PROGRAMS = ("buddy_mentoring", "code_club", "food_bank", "river_cleanup")


def sample_events(per_company: int = 12, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = datetime(2025, 11, 1, 9, tzinfo=UTC)
    events = []
    for company in COMPANIES:
        for n in range(per_company):
            event_type, unit = rng.choice(EVENT_TYPES)
            events.append(
                {
                    "event_id": f"evt_{company}_{n:03d}",
                    "company_id": company,
                    "user_id": f"user_{rng.randint(100, 999)}",
                    "event_type": event_type,
                    "occurred_at": start + timedelta(hours=rng.randint(0, 24 * 20)),
                    "value": round(rng.uniform(0.5, 8), 1) if unit == "hours" else rng.randint(1, 250),
                    "unit": unit,
                    "outcome_scores": {
                        "community_engagement": round(rng.random(), 2),
                        "skill_development": round(rng.random(), 2),
                    },
                    "metadata": {"program": rng.choice(PROGRAMS)},
                }
            )
    bad = dict(events[0], event_id="evt_acme_bad_user", user_id="")
    negative = dict(events[1], event_id="evt_globex_bad_value", company_id="globex", value=-3)
    return [*events, bad, negative]


def seed(engine: Engine, *, per_company: int = 12) -> int:
    events = sample_events(per_company)
    with engine.begin() as conn:
        conn.execute(
            company_integrations.insert(),
            [
                {
                    "company_id": company,
                    "provider": provider,
                    "enabled": True,
                    "settings": SETTINGS.get((company, provider)),
                }
                for company, providers in INTEGRATIONS.items()
                for provider in providers
            ],
        )
        conn.execute(impact_events.insert(), events)
        return conn.execute(sa.select(sa.func.count()).select_from(impact_events)).scalar_one()
