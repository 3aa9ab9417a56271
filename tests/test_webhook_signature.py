"""The webhook signature scheme (security/webhooks): what verifies, and every way it refuses."""

import pytest

from impactin_pipelines.security.webhooks import SignatureError, parse_header, sign, verify

BODY = b'{"id":"cb_1","type":"delivery.confirmed","eventId":"e1"}'
NOW = 1_764_000_000
K = "k3y-of-the-provider"


def test_a_signature_verifies_with_its_secret_and_timestamp() -> None:
    header = sign(BODY, "s3cret", NOW)
    assert header.startswith(f"t={NOW},v1=")
    assert verify(header, BODY, ["s3cret"], now=NOW + 299, tolerance_s=300) == NOW


def test_rotation_any_secret_and_any_v1_entry_may_match() -> None:
    old, new = sign(BODY, "old", NOW), sign(BODY, "new", NOW)
    both = f"{old},v1={new.split('v1=')[1]}"
    assert verify(both, BODY, ["new"], now=NOW, tolerance_s=300) == NOW
    assert verify(old, BODY, ["new", "old"], now=NOW, tolerance_s=300) == NOW


@pytest.mark.parametrize(
    ("header", "body", "secrets", "now", "reason"),
    [
        (None, BODY, [K], NOW, "missing"),
        ("", BODY, [K], NOW, "missing"),
        ("v1=abc", BODY, [K], NOW, "needs t="),
        ("t=soon,v1=abc", BODY, [K], NOW, "unix seconds"),
        ("garbage", BODY, [K], NOW, "malformed"),
        (sign(BODY, K, NOW), BODY + b" ", [K], NOW, "does not match"),  # one byte more
        (sign(BODY, K, NOW), BODY, ["other-secret-value"], NOW, "does not match"),
        (sign(BODY, K, NOW), BODY, [], NOW, "no webhook secret"),
        (sign(BODY, K, NOW), BODY, [K], NOW + 301, "outside"),  # stale
        (sign(BODY, K, NOW), BODY, [K], NOW - 301, "outside"),  # from the future
        (sign(BODY, K, NOW).replace(f"t={NOW}", f"t={NOW + 1}"), BODY, [K], NOW, "does not match"),  # moved t
    ],
)
def test_refusals_name_the_reason_and_never_the_secret(header, body, secrets, now, reason) -> None:
    with pytest.raises(SignatureError, match=reason) as caught:
        verify(header, body, secrets, now=now, tolerance_s=300)
    assert all(secret not in str(caught.value) for secret in secrets)


def test_parse_header_keeps_every_v1_and_ignores_other_schemes() -> None:
    assert parse_header("t=5,v0=zz,v1=AB,v1=cd") == (5, ["ab", "cd"])
