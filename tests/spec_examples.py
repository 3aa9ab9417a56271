"""The integration guide's payload examples, verbatim (../shared/spec/impact-in-integration-guide.md): golden
outputs for the guide's example event (tests/support.SPEC_EVENT)."""

import json

SPEC_BENEVITY = """
{
  "schema_version": "v1.0",
  "event": {
    "id": "evt_123",
    "type": "volunteer_hours",
    "timestamp": "2025-11-14T10:00:00Z",
    "user": {
      "external_id": "user_456",
      "company_id": "company_789"
    },
    "impact": {
      "value": 5.0,
      "unit": "hours",
      "metadata": {
        "program": "buddy_mentoring"
      }
    }
  }
}
"""

SPEC_GOODERA = """
{
  "schema_version": "v2.1",
  "event": {
    "external_id": "evt_123",
    "event_type": "volunteer_hours",
    "timestamp": "2025-11-14T10:00:00Z",
    "participant": {
      "external_user_id": "user_456"
    },
    "impact": {
      "dimensions": [
        {
          "dimension_name": "community_engagement",
          "score": 0.85,
          "scale": "normalized_0_1"
        },
        {
          "dimension_name": "skill_development",
          "score": 0.72,
          "scale": "normalized_0_1"
        }
      ],
      "metadata": {
        "program": "buddy_mentoring"
      }
    }
  }
}
"""

SPEC_WORKDAY_REST = """
{
  "schema_version": "v3.0",
  "impact_report": {
    "external_reference_id": "evt_123",
    "report_date": "2025-11-14T10:00:00Z",
    "worker": {
      "worker_id": "user_456"
    },
    "csr_activity": {
      "activity_type": "volunteer_hours",
      "value": 5.0,
      "unit_of_measure": "Hours"
    }
  }
}
"""

BENEVITY_EXAMPLE = json.loads(SPEC_BENEVITY)
GOODERA_EXAMPLE = json.loads(SPEC_GOODERA)
WORKDAY_REST_EXAMPLE = json.loads(SPEC_WORKDAY_REST)
