"""Settings: the contract's names and aliases, one clear line per bad value, secrets never shown."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet

from bot.config import DEFAULT_RUNPOD_API_URL, Secret, configure_logging, load_settings
from bot.errors import ConfigError


def test_defaults_with_an_empty_environment():
    settings = load_settings({})
    assert settings.discord_token is None
    assert settings.runpod_api_url == DEFAULT_RUNPOD_API_URL
    assert settings.database_url.reveal() == "sqlite:///data/bot.db"
    assert settings.log_level == "INFO"
    assert settings.runpod_worker == "sdxl"
    assert settings.guild_ids == ()


def test_contract_names_are_read():
    keys = [Fernet.generate_key().decode() for _ in range(2)]
    settings = load_settings(
        {
            "DISCORD_TOKEN": "tok",
            "RUNPOD_API_KEY": "rp_key_123456789",
            "RUNPOD_ENDPOINT_ID": "abc123",
            "RUNPOD_API_URL": "http://127.0.0.1:9/v2/",
            "DATABASE_URL": "postgres://u:p@db/x",
            "BOT_ENCRYPTION_KEY": ",".join(keys),
            "DISCORD_GUILD_IDS": "123, 456",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.require_discord_token().reveal() == "tok"
    assert settings.require_runpod()[0].reveal() == "rp_key_123456789"
    assert settings.runpod_endpoint_id == "abc123"
    assert settings.runpod_api_url == "http://127.0.0.1:9/v2"
    assert [key.reveal() for key in settings.encryption_keys] == keys
    assert settings.guild_ids == (123, 456)
    assert settings.log_level == "DEBUG"


def test_encryption_key_is_a_fernet_key_or_a_long_secret_mixed_in_rotation():
    generated = "0123456789abcdef" * 4  # 64 hex characters, as a PaaS's "generator": "secret" makes
    fernet = Fernet.generate_key().decode()
    settings = load_settings({"BOT_ENCRYPTION_KEY": f"{generated}, {fernet}"})
    assert [key.reveal() for key in settings.encryption_keys] == [generated, fernet]
    assert load_settings({"BOT_ENCRYPTION_KEY": "x" * 32}).encryption_keys == (Secret("x" * 32),)


def test_a_short_encryption_secret_is_refused_without_showing_it():
    fernet = Fernet.generate_key().decode()
    with pytest.raises(ConfigError) as caught:
        load_settings({"BOT_ENCRYPTION_KEY": f"{fernet},{'s3cret' * 5}x"})  # 31 characters
    assert str(caught.value) == (
        "BOT_ENCRYPTION_KEY entry 2 is too short (31 characters): give a Fernet key or a random secret of at least "
        '32 characters; make one with: python -c "import secrets; print(secrets.token_hex(32))"'
    )


def test_runpod_key_alias_and_base_url_alias():
    settings = load_settings({"RUNPOD_KEY": "k", "RUNPOD_BASE_URL": "https://api.runpod.ai/v2/xyz789/"})
    key, endpoint = settings.require_runpod()
    assert key.reveal() == "k"
    assert endpoint == "xyz789"
    assert settings.runpod_api_url == "https://api.runpod.ai/v2"


def test_explicit_names_win_over_aliases():
    settings = load_settings(
        {
            "RUNPOD_API_KEY": "main",
            "RUNPOD_KEY": "alias",
            "RUNPOD_ENDPOINT_ID": "explicit",
            "RUNPOD_BASE_URL": "https://api.runpod.ai/v2/frombase",
            "RUNPOD_API_URL": "https://proxy.example/v2",
        }
    )
    assert settings.require_runpod()[0].reveal() == "main"
    assert settings.runpod_endpoint_id == "explicit"
    assert settings.runpod_api_url == "https://proxy.example/v2"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"DISCORD_GUILD_IDS": "123,abc"}, "DISCORD_GUILD_IDS"),
        ({"BOT_ENCRYPTION_KEY": "not-a-key"}, "BOT_ENCRYPTION_KEY entry 1"),
        ({"RUNPOD_API_URL": "api.runpod.ai"}, "RUNPOD_API_URL"),
        ({"RUNPOD_BASE_URL": "https://api.runpod.ai"}, "RUNPOD_BASE_URL"),
        ({"RUNPOD_ENDPOINT_ID": "../../admin"}, "RUNPOD_ENDPOINT_ID"),
        ({"DATABASE_URL": "mysql://root:hunter2@db/x"}, "DATABASE_URL"),
        ({"RUNPOD_WORKER": "dalle"}, "RUNPOD_WORKER"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env, names):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert names in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_missing_required_values_are_named():
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        load_settings({}).require_discord_token()
    with pytest.raises(ConfigError, match="RUNPOD_API_KEY"):
        load_settings({"RUNPOD_ENDPOINT_ID": "e"}).require_runpod()
    with pytest.raises(ConfigError, match="RUNPOD_ENDPOINT_ID"):
        load_settings({"RUNPOD_API_KEY": "k"}).require_runpod()


def test_secrets_never_show_in_repr_str_or_logs(caplog):
    settings = load_settings(
        {
            "DISCORD_TOKEN": "discord-secret-token",
            "RUNPOD_API_KEY": "rp_secret_key_abcd",
            "DATABASE_URL": "postgres://u:pw@h/d",
        }
    )
    text = f"{settings!r} {settings} {settings.runpod_api_key}"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %s %r", settings, settings.runpod_api_key)
    for secret in ("discord-secret-token", "rp_secret_key_abcd", "pw@h"):
        assert secret not in text
        assert secret not in caplog.text
    assert Secret("rp_secret_key_abcd").masked == "…abcd"
    assert Secret("short").masked == "…"


def test_dotenv_is_loaded_but_real_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("RUNPOD_ENDPOINT_ID=fromfile\nLOG_LEVEL=WARNING\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    monkeypatch.delenv("RUNPOD_ENDPOINT_ID", raising=False)
    settings = load_settings()
    assert settings.runpod_endpoint_id == "fromfile"
    assert settings.log_level == "ERROR"
    monkeypatch.delenv("RUNPOD_ENDPOINT_ID", raising=False)


def test_discord_http_logger_stays_quiet():
    configure_logging("DEBUG")
    assert logging.getLogger("discord.http").level == logging.WARNING


def test_log_lines_never_carry_tokens_or_keys():
    from bot.config import RedactingFormatter

    formatter = RedactingFormatter(("rp_secret_key_abcd", "short"))
    record = logging.LogRecord(
        "discord.webhook.async_", logging.DEBUG, __file__, 1,
        "PATCH %s with key %s, event %s", (
            "https://discord.com/api/v10/webhooks/123/aW50ZXJhY3Rpb246MTIzNDU2Nzg5.abc-def_ghi/messages/@original",
            "rp_secret_key_abcd",
            {"op": 0, "d": {"token": "aW50ZXJhY3Rpb24", "id": "1"}},
        ), None,
    )  # fmt: skip
    line = formatter.format(record)
    assert "/webhooks/123/<token>/messages/@original" in line
    assert "'token': '<token>'" in line
    assert "rp_secret_key_abcd" not in line
    assert "<secret>" in line


def test_whatever_a_member_typed_is_blanked_in_gateway_events():
    """A form's text inputs and a command's options arrive as "value": blanked, whichever quotes repr used."""
    from bot.config import RedactingFormatter

    event = {
        "t": "INTERACTION_CREATE",
        "d": {
            "type": 5,
            "data": {"custom_id": "runpod:setup:sdxl:1", "components": [
                {"type": 1, "components": [{"type": 4, "custom_id": "api_key", "value": "rpa_TYPED_KEY_123"}]},
                {"type": 18, "component": {"type": 4, "custom_id": "endpoint_id", "value": "it's \"quoted\""}},
            ]},
        },
    }  # fmt: skip
    record = logging.LogRecord("discord.gateway", logging.DEBUG, __file__, 1, "WebSocket Event: %s", (event,), None)
    line = RedactingFormatter().format(record)
    assert "rpa_TYPED_KEY_123" not in line
    assert "quoted" not in line
    assert line.count("'value': '<typed>'") == 2
    assert "'custom_id': 'api_key'" in line  # what was asked stays readable


def test_a_base_url_with_no_endpoint_path_means_the_local_test_server():
    """`python handler.py --rp_serve_api` serves one worker at the root, no key needed (SPEC's contract)."""
    settings = load_settings({"RUNPOD_BASE_URL": "http://localhost:8000/"})
    assert (settings.runpod_local, settings.runpod_api_url, settings.runpod_endpoint_id) == (
        True,
        "http://localhost:8000",
        "local",
    )
    assert settings.require_runpod()[1] == "local"  # no RUNPOD_API_KEY needed
    hosted = load_settings({"RUNPOD_KEY": "k", "RUNPOD_BASE_URL": "https://api.runpod.ai/v2/xyz789"})
    assert not hosted.runpod_local
