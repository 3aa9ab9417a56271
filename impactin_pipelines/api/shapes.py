"""Delivery rows in the API contract's response shapes (camelCase, timestamps in UTC with 'Z'), and nothing more:
the contract's fields, field for field, plus a delivery's `priority` (urgent or normal) and what its provider said
later through a webhook (`confirmation`: confirmed, rejected, deleted or null; `confirmedAt`: when)."""

import json
from datetime import datetime
from typing import Any

from impactin_pipelines.domain.events import Priority, format_timestamp
from impactin_pipelines.store.delivery_log import Page


def _time(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def _json_or_text(text: str | None) -> Any:
    """Stored payloads and responses are text: JSON ones go out as JSON, anything else (SOAP XML) as a string."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def delivery_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "companyId": row["company_id"],
        "provider": row["provider"],
        "deliveryId": row["delivery_id"],
        "status": row["status"],
        "attemptCount": row["attempt_count"],
        "deliveredAt": _time(row["delivered_at"]),
        "createdAt": _time(row["created_at"]),
        "confirmation": row["confirmation"],
        "confirmedAt": _time(row["confirmed_at"]),
    }


def delivery_detail(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "companyId": row["company_id"],
        "provider": row["provider"],
        "deliveryId": row["delivery_id"],
        "payload": _json_or_text(row["payload"]),
        "status": row["status"],
        "attemptCount": row["attempt_count"],
        "priority": Priority.of_rank(row["priority"]).value,
        "providerResponse": _json_or_text(row["provider_response"]),
        "deliveredAt": _time(row["delivered_at"]),
        "createdAt": _time(row["created_at"]),
        "updatedAt": _time(row["updated_at"]),
        "confirmation": row["confirmation"],
        "confirmedAt": _time(row["confirmed_at"]),
    }


def pagination(page: Page) -> dict[str, Any]:
    """The guide's shape for a page asked by number; for a cursor page: limit, hasNext, hasPrev, nextCursor."""
    if page.page is None:
        return {
            "limit": page.limit,
            "hasNext": page.next_cursor is not None,
            "hasPrev": page.after_cursor,
            "nextCursor": page.next_cursor,
        }
    total_pages = page.total_pages
    return {
        "page": page.page,
        "limit": page.limit,
        "total": page.total or 0,
        "totalPages": total_pages,
        "hasNext": page.page < total_pages,
        "hasPrev": page.page > 1,
    }


def replay_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    successful = sum(1 for r in results if r["success"])
    return {
        "summary": {"total": len(results), "successful": successful, "failed": len(results) - successful},
        "results": results,
    }


def replay_item(ident: str, success: bool, new_status: str | None, error: str | None) -> dict[str, Any]:
    """The bulk-replay result item: `newStatus` when there is one, `error` when it did not succeed."""
    item: dict[str, Any] = {"id": ident, "success": success}
    if new_status is not None:
        item["newStatus"] = new_status
    if not success:
        item["error"] = error or "replay did not succeed"
    return item
