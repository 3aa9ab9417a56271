"""A malformed IMPACTIN_ENCRYPTION_KEY stops `impactin run` and `impactin api` before they start, naming the
variable (never the key): started, they would fail every row that needs a secret at rest as `config`."""

import socket

import pytest

from impactin_pipelines.domain.errors import ConfigError
from impactin_pipelines.security.crypto import KeyRing, load_keyring
from tests.cli_support import cli_env, run_cli
from tests.support import add_events, add_integration, events, rows

GOOD = "n3SsmO2cM9e1Xg7Hcm0qgW9yGx5dB3wWcwJ2Y2pS6gY="  # fixed: parametrised ids must match across xdist workers
NOT_A_KEY = "not-a-fernet-key-at-all"
WRONG_LENGTH = "QUJDREVGR0hJSktMTU5PUA=="  # valid base64, 16 bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (NOT_A_KEY, "IMPACTIN_ENCRYPTION_KEY is not a valid Fernet key (32 url-safe"),
        (f"{GOOD},{WRONG_LENGTH}", "IMPACTIN_ENCRYPTION_KEY is not a valid Fernet key (key 2 of 2: 32 url-safe"),
        (" , ", "IMPACTIN_ENCRYPTION_KEY holds no key"),
    ],
    ids=["malformed", "second-of-two", "empty"],
)
def test_key_parsing_names_the_variable_and_which_key_never_the_value(value, named):
    with pytest.raises(ConfigError) as raised:
        load_keyring({"IMPACTIN_ENCRYPTION_KEY": value, "IMPACTIN_WAREHOUSE_URL": "postgresql+psycopg://h/db"})
    assert named in str(raised.value)
    assert (
        NOT_A_KEY not in str(raised.value) and WRONG_LENGTH not in str(raised.value) and GOOD not in str(raised.value)
    )
    assert KeyRing([GOOD]).decrypt(KeyRing([GOOD]).encrypt("x")) == "x"


def test_a_corrupt_key_file_of_the_embedded_default_is_named(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "encryption.key").write_text(NOT_A_KEY)
    with pytest.raises(
        ConfigError, match=r"IMPACTIN_ENCRYPTION_KEY is not set, and the key file .*encryption\.key is not a valid"
    ):
        load_keyring({"IMPACTIN_STATE_DIR": str(state), "IMPACTIN_WAREHOUSE_URL": f"sqlite:///{state}/warehouse.db"})


def test_run_and_api_refuse_to_start_on_a_malformed_key(engine, warehouse_url, tmp_path):
    add_integration(engine, "acme", "goodera")
    add_events(engine, events("acme", 2))
    env = cli_env(tmp_path, warehouse_url)
    for value, named in (
        (NOT_A_KEY, "IMPACTIN_ENCRYPTION_KEY is not a valid Fernet key"),
        (f"{GOOD},{WRONG_LENGTH}", "IMPACTIN_ENCRYPTION_KEY is not a valid Fernet key (key 2 of 2"),
    ):
        ran = run_cli(["run", "--provider", "goodera"], {**env, "IMPACTIN_ENCRYPTION_KEY": value}, timeout=120)
        assert ran.returncode == 1, ran.stdout + ran.stderr
        assert named in ran.stderr and ran.stdout == ""
        assert NOT_A_KEY not in ran.stderr and WRONG_LENGTH not in ran.stderr and GOOD not in ran.stderr
    assert rows(engine) == []  # nothing was extracted, nothing failed as `config`

    # a server that started would never exit: the timeout turns that into a failure
    served = run_cli(["api", "--port", str(_free_port())], {**env, "IMPACTIN_ENCRYPTION_KEY": NOT_A_KEY}, timeout=60)
    assert served.returncode == 1, served.stderr
    assert "IMPACTIN_ENCRYPTION_KEY is not a valid Fernet key" in served.stderr and NOT_A_KEY not in served.stderr
