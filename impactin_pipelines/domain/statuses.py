"""Delivery states and failure kinds, the vocabulary every reader and writer shares."""

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """The four delivery states: pending -> success | retrying -> ... | failed."""

    PENDING = "pending"
    SUCCESS = "success"
    RETRYING = "retrying"
    FAILED = "failed"


class ErrorKind(StrEnum):
    """Why a row is not (yet) delivered."""

    INVALID_EVENT = "invalid_event"  # the event cannot be mapped; never sent
    REJECTED = "rejected"  # the provider said no (4xx, SOAP client fault)
    EXHAUSTED = "exhausted"  # transient errors outlived every retry
    CONFIG = "config"  # credentials or settings missing or wrong
    TRANSIENT = "transient"  # last attempt failed transiently; the row will be retried


class AttemptOutcome(StrEnum):
    """What one HTTP exchange with a provider came to."""

    SUCCESS = "success"
    RETRYABLE = "retryable"  # timeout, connection error, 5xx in the retry list
    RATE_LIMITED = "rate_limited"  # 429 or quota exhausted; waiting does not burn an attempt
    AUTH_EXPIRED = "auth_expired"  # 401 on an OAuth provider: fetch a new token and retry; does not burn an attempt
    PERMANENT = "permanent"  # any other 4xx, SOAP client fault
    CONFIG = "config"  # we could not even build the request (credentials, settings)


class RowOutcome(StrEnum):
    """What one delivery run did with one row it claimed: the status it settled the row in, or why it settled
    none. The settled values are the `DeliveryStatus` values."""

    SUCCESS = DeliveryStatus.SUCCESS.value
    RETRYING = DeliveryStatus.RETRYING.value
    FAILED = DeliveryStatus.FAILED.value
    CLAIM_LOST = "claim_lost"  # the claim was taken over or lapsed: the row is left to its new holder
    NOT_SENT = "not_sent"  # the run could no longer record deliveries, so it sent this row no (further) request
    UNRECORDED = "unrecorded"  # the warehouse failed while this row's attempt or settlement was being written
    HELD = "held"  # its provider's circuit was open or paused: not sent, no attempt spent, the row stays due

    @classmethod
    def settled(cls, status: DeliveryStatus) -> "RowOutcome":
        return cls(status.value)

    @property
    def delivery_status(self) -> DeliveryStatus | None:
        """The status this run settled the row in; None when it settled none (the stored status stands)."""
        settled = self in (RowOutcome.SUCCESS, RowOutcome.RETRYING, RowOutcome.FAILED)
        return DeliveryStatus(self.value) if settled else None
