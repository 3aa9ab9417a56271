"""Secrets at rest and their keys, on both backends: `impactin keys rotate` re-encrypts OAuth tokens and per-company
credentials under the new key while deliveries go on (no token is re-fetched, nothing stops), is idempotent and
loses no concurrent write; a wrong key is a clear `config` error naming IMPACTIN_ENCRYPTION_KEY for that company
only; `keys generate` and `keys encrypt` make what the procedure needs."""

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from impactin_pipelines.connectors.registry import ConnectorFactory
from impactin_pipelines.domain.providers import Provider
from impactin_pipelines.providers.env import ProviderEnv
from impactin_pipelines.security.crypto import DecryptionError, KeyRing, generate_key
from impactin_pipelines.services.extract import extract
from impactin_pipelines.services.key_rotation import rotate_secrets
from impactin_pipelines.store.schema import company_integrations, impact_provider_tokens
from impactin_pipelines.store.tokens import StoredToken, TokenStore, credential_key
from tests.cli_support import cli_env, run_cli
from tests.support import add_events, add_integration, deliver, events, fast_settings, rows

OLD, NEW, UNRELATED = generate_key(), generate_key(), generate_key()
NOW = datetime.now(UTC).replace(microsecond=0)


def ring(*keys: str) -> KeyRing:
    return KeyRing(list(keys))


def save_token(engine, keyring: KeyRing, cred: str, provider: str, access: str) -> None:
    store = TokenStore(engine, lambda: keyring)
    with store.exclusive(provider, cred) as tx:
        tx.save(StoredToken(access, NOW, NOW + timedelta(hours=1), refresh_token=f"refresh-of-{access}"))


def load_token(engine, keyring: KeyRing, cred: str, provider: str) -> StoredToken | None:
    return TokenStore(engine, lambda: keyring).load(provider, cred)


def settings_of(engine, company: str, provider: str) -> dict:
    with engine.connect() as conn:
        raw = conn.execute(
            sa.select(company_integrations.c.settings).where(
                company_integrations.c.company_id == company, company_integrations.c.provider == provider
            )
        ).scalar_one()
    return json.loads(raw)


def token_columns(engine) -> list[tuple[str, str | None]]:
    t = impact_provider_tokens
    with engine.connect() as conn:
        stmt = sa.select(t.c.access_token_encrypted, t.c.refresh_token_encrypted).order_by(t.c.credential_key)
        return [tuple(r) for r in conn.execute(stmt).all()]


def seed_secrets(engine, key: str) -> None:
    """Two tokens and three per-company secrets (one nested) under `key`, next to settings that are not secret."""
    keyring = ring(key)
    save_token(engine, keyring, "acme", "goodera", "tok-acme")
    save_token(engine, keyring, "umbrella", "workday", "tok-umbrella")
    add_integration(
        engine,
        "acme",
        "goodera",
        settings={"client_id": "acme-client", "client_secret": {"encrypted": keyring.encrypt("acme-secret")}},
    )
    add_integration(
        engine,
        "initech",
        "workday",
        settings={
            "protocol": "soap",
            "password": {"encrypted": keyring.encrypt("initech-password")},
            "extra": {"backup": [{"encrypted": keyring.encrypt("nested-secret")}]},
        },
    )
    add_integration(engine, "globex", "benevity")  # no settings at all


def test_rotate_moves_every_secret_to_the_new_key_and_is_idempotent(engine, warehouse_url, tmp_path) -> None:
    seed_secrets(engine, OLD)
    before = token_columns(engine)
    env = cli_env(tmp_path, warehouse_url, IMPACTIN_ENCRYPTION_KEY=f"{NEW},{OLD}")

    dry = run_cli(["keys", "rotate", "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["secrets"]["rotated"] == 3 and token_columns(engine) == before  # wrote nothing

    first = run_cli(["keys", "rotate", "--json"], env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["ok"], report["keys"]) == (True, 2)
    assert report["tokens"] == {"rotated": 2, "current": 0, "unreadable": []}
    assert report["secrets"] == {"rotated": 3, "current": 0, "unreadable": []}

    new_only, old_only = ring(NEW), ring(OLD)
    for company, provider, access in (("acme", "goodera", "tok-acme"), ("umbrella", "workday", "tok-umbrella")):
        token = load_token(engine, new_only, company, provider)
        assert token is not None and (token.access_token, token.refresh_token) == (access, f"refresh-of-{access}")
        assert load_token(engine, old_only, company, provider) is None  # really re-encrypted, not just copied
    acme, initech = settings_of(engine, "acme", "goodera"), settings_of(engine, "initech", "workday")
    assert acme["client_id"] == "acme-client" and initech["protocol"] == "soap"  # the rest is untouched
    assert new_only.decrypt(acme["client_secret"]["encrypted"]) == "acme-secret"
    assert new_only.decrypt(initech["password"]["encrypted"]) == "initech-password"
    assert new_only.decrypt(initech["extra"]["backup"][0]["encrypted"]) == "nested-secret"
    with pytest.raises(DecryptionError):
        old_only.decrypt(initech["password"]["encrypted"])

    after = token_columns(engine)
    again = run_cli(["keys", "rotate"], env)  # idempotent: nothing left to do, nothing rewritten
    assert again.returncode == 0, again.stderr
    assert "OAuth tokens: 0 re-encrypted, 2 already under the current key, 0 unreadable" in again.stdout
    assert "per-company secrets: 0 re-encrypted, 3 already under the current key, 0 unreadable" in again.stdout
    assert "the old key can leave IMPACTIN_ENCRYPTION_KEY" in again.stdout
    assert token_columns(engine) == after
    for secret in ("acme-secret", "initech-password", "nested-secret", "tok-acme", NEW, OLD):
        assert secret not in first.stdout + first.stderr + again.stdout + again.stderr


def test_deliveries_go_on_through_a_rotation_without_fetching_a_new_token(engine, sandbox) -> None:
    """Step 1 ("new,old" everywhere): the token and the company's secret stored under the old key still work.
    Step 2 (rotate) and step 3 ("new" only): they still work, and the token was never fetched again."""
    goodera = sandbox.providers["goodera"]
    env = {**sandbox.env(), "GOODERA_RATE_LIMIT": "1000/minute"}
    secret = env.pop("GOODERA_CLIENT_SECRET")  # only in the company's settings, encrypted
    old = ring(OLD)
    add_integration(engine, "acme", "goodera", settings={"client_secret": {"encrypted": old.encrypt(secret)}})
    cred = credential_key(env["GOODERA_TOKEN_URL"], env["GOODERA_CLIENT_ID"], owner="acme")  # its own secret

    def delivery_round(n: int, keyring: KeyRing) -> None:
        add_events(engine, events("acme", 1, prefix=f"round{n}"))
        extract(engine, "acme", Provider.GOODERA)
        factory = ConnectorFactory(
            engine, env=ProviderEnv.from_env(env), settings=fast_settings(), keyring=lambda: keyring
        )
        deliver(engine, factory, "goodera")
        factory.close()

    delivery_round(0, old)  # before the rotation: the first token, under the old key
    issued = goodera.oauth.stats()["tokens_issued"]
    assert issued == 1
    delivery_round(1, ring(NEW, OLD))
    report = rotate_secrets(engine, ring(NEW, OLD))
    assert (report.tokens.rotated, report.secrets.rotated, report.ok) == (1, 1, True)
    delivery_round(2, ring(NEW))
    assert goodera.oauth.stats()["tokens_issued"] == issued  # no re-authentication at any step
    assert {r["status"] for r in rows(engine)} == {"success"} and len(rows(engine)) == 3
    assert load_token(engine, ring(NEW), cred, "goodera") is not None


def test_a_wrong_key_is_a_config_error_for_that_company_only(engine, sandbox, warehouse_url, tmp_path) -> None:
    unrelated = ring(UNRELATED)
    with pytest.raises(DecryptionError, match="cannot be decrypted with IMPACTIN_ENCRYPTION_KEY"):
        ring(NEW).decrypt(unrelated.encrypt("x"))

    env = sandbox.env()
    add_integration(
        engine, "acme", "benevity", settings={"api_key": {"encrypted": unrelated.encrypt(env["BENEVITY_API_KEY"])}}
    )
    add_integration(engine, "globex", "benevity")  # the environment's credentials
    add_events(engine, events("acme", 2) + events("globex", 2))
    for company in ("acme", "globex"):
        extract(engine, company, Provider.BENEVITY)
    keyring = ring(NEW, OLD)
    factory = ConnectorFactory(engine, env=ProviderEnv.from_env(env), settings=fast_settings(), keyring=lambda: keyring)
    deliver(engine, factory, "benevity")
    factory.close()

    for row in rows(engine, company_id="acme"):
        assert (row["status"], row["error_kind"], row["attempt_count"]) == ("failed", "config", 0)
        assert row["last_error"] == (
            "settings.api_key for acme/benevity: a stored secret cannot be decrypted with IMPACTIN_ENCRYPTION_KEY: "
            "the key is wrong or was rotated away"
        )
    assert {r["status"] for r in rows(engine, company_id="globex")} == {"success"}
    assert len(sandbox.providers["benevity"].snapshot()["requests"]) == 2  # acme sent nothing, not even garbage

    cli = cli_env(tmp_path, warehouse_url, IMPACTIN_ENCRYPTION_KEY=f"{NEW},{OLD}")
    refused = run_cli(["keys", "rotate"], cli)
    assert refused.returncode == 1
    assert "error: acme/benevity: settings.api_key cannot be decrypted with any key in IMPACTIN_ENCRYPTION_KEY" in (
        refused.stderr
    )
    assert "keep the old key in IMPACTIN_ENCRYPTION_KEY" in refused.stderr
    garbage = run_cli(["keys", "rotate"], {**cli, "IMPACTIN_ENCRYPTION_KEY": "not-a-key"})
    assert garbage.returncode == 1 and "Traceback" not in garbage.stderr
    assert "IMPACTIN_ENCRYPTION_KEY is not a valid Fernet key" in garbage.stderr and "not-a-key" not in garbage.stderr


class RacingKeyRing(KeyRing):
    """A real KeyRing that lets a token refresh commit between the rotator's read and its write: the race a
    rotation running next to deliveries can meet, made certain instead of rare."""

    def __init__(self, keys: list[str], refresh: threading.Thread, *, wait: bool) -> None:
        super().__init__(keys)
        self.refresh, self.wait = refresh, wait

    def rotate(self, token: str) -> str:
        if not self.refresh.is_alive() and self.refresh.ident is None:
            self.refresh.start()
            if self.wait:  # PostgreSQL: the refresh commits now. SQLite: it waits for our write lock (BEGIN IMMEDIATE)
                self.refresh.join(timeout=30)
        return super().rotate(token)


def test_rotation_never_overwrites_a_token_refreshed_meanwhile(engine) -> None:
    """A process not yet given the new key list refreshes the token (under the old key) while the rotation holds
    the old ciphertext: the rotation writes only over what it read, re-reads, and the refreshed token survives."""
    writer_ring = ring(OLD, NEW)
    save_token(engine, writer_ring, "acme", "goodera", "tok-1")
    refresh = threading.Thread(target=save_token, args=(engine, writer_ring, "acme", "goodera", "tok-2"))
    racing = RacingKeyRing([NEW, OLD], refresh, wait=engine.dialect.name == "postgresql")
    first = rotate_secrets(engine, racing)
    refresh.join(timeout=60)
    assert first.ok and first.tokens.rotated == 1 and not refresh.is_alive()
    rotate_secrets(engine, ring(NEW, OLD))  # what the operator's second run (or the next check) does
    token = load_token(engine, ring(NEW), "acme", "goodera")
    assert token is not None and (token.access_token, token.refresh_token) == ("tok-2", "refresh-of-tok-2")


def test_settings_that_are_not_json_are_reported_and_the_rest_is_rotated(engine) -> None:
    add_integration(engine, "acme", "benevity", settings="{not json")
    add_integration(engine, "globex", "benevity", settings={"api_key": {"encrypted": ring(OLD).encrypt("k")}})
    report = rotate_secrets(engine, ring(NEW, OLD))
    assert not report.ok and report.secrets.rotated == 1
    assert report.unparsed_settings[0].startswith("acme/benevity: settings are not valid JSON")
    assert ring(NEW).decrypt(settings_of(engine, "globex", "benevity")["api_key"]["encrypted"]) == "k"


def test_generate_and_encrypt(tmp_path) -> None:
    env = cli_env(tmp_path, f"sqlite:///{tmp_path / 'w.db'}", IMPACTIN_ENCRYPTION_KEY=NEW)
    generated = run_cli(["keys", "generate"], env)
    assert generated.returncode == 0
    Fernet(generated.stdout.strip().encode())  # a valid key
    import subprocess

    from tests.cli_support import IMPACTIN

    done = subprocess.run(
        [*IMPACTIN, "keys", "encrypt"], input="s3cret-value\n", env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "s3cret-value" not in done.stdout + done.stderr
    assert ring(NEW).decrypt(json.loads(done.stdout)["encrypted"]) == "s3cret-value"
