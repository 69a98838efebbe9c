"""Layered configuration (config.py) and the validated Settings (settings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from swarmbus.config import (
    CONFIG_ENV,
    FIELD_BY_KEY,
    FIELDS,
    default_config_path,
    expand_broker_url,
    load_raw,
    parse_bool,
)
from swarmbus.errors import ConfigError, UsageError
from swarmbus.settings import BrokerSettings, Settings, WakeSettings, build_settings, load_settings


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def env_for(tmp_path: Path, **values: str) -> dict[str, str]:
    """An environment with a (possibly absent) config file of its own."""
    return {CONFIG_ENV: str(write(tmp_path, "")), **values}


def settings_from(tmp_path: Path, toml: str = "", cli: dict[str, tuple[Any, str]] | None = None,
                  **env: str) -> Settings:
    path = write(tmp_path, toml)
    return load_settings(cli, env={CONFIG_ENV: str(path), **env})[0]


# -- environment coercion -------------------------------------------------------------------------

SAMPLES = {"str": ("some-value", "some-value"), "int": ("42", 42), "float": ("1.5", 1.5),
           "list": ('notify --to "a b"', ["notify", "--to", "a b"])}
ENV_NAMES = [(spec.key, name) for spec in FIELDS for name in spec.env]


@pytest.mark.parametrize(("key", "name"), ENV_NAMES, ids=[n for _, n in ENV_NAMES])
def test_every_env_name_coerces(tmp_path: Path, key: str, name: str) -> None:
    spec = FIELD_BY_KEY[key]
    absent = tmp_path / "absent.toml"
    if key == "broker.url":
        raw = load_raw(env={name: "mqtts://h.example:9999"}, config_path=absent)
        assert raw.values["broker.host"] == "h.example"
        assert raw.values["broker.port"] == 9999
        assert raw.values["broker.tls"] is True
        assert raw.sources["broker.host"] == f"env:{name}"
        return
    if spec.kind == "bool":
        for text, expected in (("1", True), ("0", False), ("true", True), ("false", False), ("yes", True),
                               ("no", False), ("on", True), ("off", False), ("TRUE", True), (" Off ", False)):
            raw = load_raw(env={name: text}, config_path=absent)
            assert raw.values[key] is expected, text
            assert raw.sources[key] == f"env:{name}"
        with pytest.raises(ConfigError, match=name):
            load_raw(env={name: "maybe"}, config_path=absent)
        return
    text, expected = SAMPLES[spec.kind]
    raw = load_raw(env={name: text}, config_path=absent)
    assert raw.values[key] == expected
    assert raw.sources[key] == f"env:{name}"
    if spec.kind in ("int", "float"):
        with pytest.raises(ConfigError, match=name):
            load_raw(env={name: "lots"}, config_path=absent)


def test_every_field_key_is_a_settings_key() -> None:
    for spec in FIELDS:
        if spec.key == "broker.url":
            continue
        node: Any = Settings
        for part in spec.key.split("."):
            assert part in node.model_fields, spec.key
            node = node.model_fields[part].annotation
    assert FIELD_BY_KEY["broker.password"].secret


def test_seed_mqtt_names_are_recognised() -> None:
    names = {name for spec in FIELDS for name in spec.env}
    for seed in ("MQTT_BROKER", "MQTT_PORT", "MQTT_TLS", "MQTT_USERNAME", "MQTT_PASSWORD", "MQTT_CA_CERTS",
                 "MQTT_CERTFILE", "MQTT_KEYFILE", "MQTT_CLIENT_ID_PREFIX"):
        assert seed in names
    for old in ("SWARMBUS_BROKER_USERNAME", "SWARMBUS_BROKER_PASSWORD", "SWARMBUS_BROKER_CA_CERT",
                "SWARMBUS_BROKER_CLIENT_CERT", "SWARMBUS_BROKER_CLIENT_KEY", "SWARMBUS_BROKER_TLS",
                "SWARMBUS_OUTBOX", "SWARMBUS_STATE_DIR", "SWARMBUS_WAKE_POLICY"):
        assert old in names


def test_parse_bool() -> None:
    assert parse_bool("Yes", name="X") is True
    assert parse_bool("", name="X") is False
    with pytest.raises(ConfigError, match="X='2'"):
        parse_bool("2", name="X")


def test_empty_env_values_are_ignored(tmp_path: Path) -> None:
    raw = load_raw(env={"MQTT_PORT": "", "SWARMBUS_BROKER_HOST": ""}, config_path=tmp_path / "absent.toml")
    assert "broker.port" not in raw.values and "broker.host" not in raw.values


def test_invoke_env_with_bad_quoting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SWARMBUS_INVOKE"):
        load_raw(env={"SWARMBUS_INVOKE": 'notify "unterminated'}, config_path=tmp_path / "absent.toml")


# -- precedence and sources -------------------------------------------------------------------------


def test_precedence_cli_env_file_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nhost = "filehost"\nport = 1111\nusername = "fileuser"\nkeepalive = 30\n')
    env = {"MQTT_PORT": "2222", "SWARMBUS_BROKER_USERNAME": "envuser"}
    raw = load_raw({"broker.username": ("cliuser", "--username"), "broker.tls": (None, "--tls")},
                   env=env, config_path=path)
    assert raw.config_path == path and raw.config_exists
    assert raw.values["broker.host"] == "filehost" and raw.sources["broker.host"] == f"file:{path}"
    assert raw.values["broker.port"] == 2222 and raw.sources["broker.port"] == "env:MQTT_PORT"
    assert raw.values["broker.username"] == "cliuser" and raw.sources["broker.username"] == "cli:--username"
    assert raw.values["broker.keepalive"] == 30
    # a None CLI value is "not given"; an unset key has no source and takes the default
    assert "broker.tls" not in raw.values and "broker.tls" not in raw.sources
    settings = build_settings(raw)
    assert settings.broker.host == "filehost"
    assert settings.broker.port == 2222
    assert settings.broker.username == "cliuser"
    assert settings.broker.tls is False
    assert settings.broker.connect_timeout == 5.0


def test_swarmbus_names_beat_mqtt_names(tmp_path: Path) -> None:
    for key, ours, seed, a, b in (
        ("broker.host", "SWARMBUS_BROKER_HOST", "MQTT_BROKER", "ours", "seed"),
        ("broker.port", "SWARMBUS_BROKER_PORT", "MQTT_PORT", "1", "2"),
        ("broker.username", "SWARMBUS_BROKER_USERNAME", "MQTT_USERNAME", "ours", "seed"),
        ("broker.client_id_prefix", "SWARMBUS_CLIENT_ID_PREFIX", "MQTT_CLIENT_ID_PREFIX", "ours", "seed"),
    ):
        raw = load_raw(env={seed: b, ours: a}, config_path=tmp_path / "absent.toml")
        assert str(raw.values[key]) == a and raw.sources[key] == f"env:{ours}"
        raw = load_raw(env={seed: b}, config_path=tmp_path / "absent.toml")
        assert str(raw.values[key]) == b and raw.sources[key] == f"env:{seed}"


def test_mqtt_seed_environment_end_to_end(tmp_path: Path) -> None:
    s = settings_from(tmp_path, MQTT_BROKER="mqtt.internal", MQTT_PORT="8883", MQTT_TLS="1",
                      MQTT_USERNAME="hermes", MQTT_PASSWORD="pw", MQTT_CLIENT_ID_PREFIX="hermes")
    assert (s.broker.host, s.broker.effective_port, s.broker.tls) == ("mqtt.internal", 8883, True)
    assert s.broker.username == "hermes" and s.broker.resolved_password() == "pw"
    assert s.broker.client_id_prefix == "hermes"


def test_url_beats_host_in_same_pass_and_keeps_source(tmp_path: Path) -> None:
    raw = load_raw(env={"SWARMBUS_BROKER_HOST": "plain", "SWARMBUS_BROKER_URL": "mqtts://urlhost"},
                   config_path=tmp_path / "absent.toml")
    assert raw.values["broker.host"] == "urlhost"
    assert raw.sources["broker.tls"] == "env:SWARMBUS_BROKER_URL"


def test_cli_broker_url_overrides_env(tmp_path: Path) -> None:
    s = settings_from(tmp_path, cli={"broker.url": ("wss://cli.example/ws", "--broker")},
                      SWARMBUS_BROKER_URL="mqtt://env.example")
    assert (s.broker.host, s.broker.transport, s.broker.tls, s.broker.ws_path) == ("cli.example", "websockets",
                                                                                   True, "/ws")
    assert s.broker.url == "wss://cli.example:443/ws"


def test_bare_cli_host_keeps_tls_from_file(tmp_path: Path) -> None:
    s = settings_from(tmp_path, '[broker]\ntls = true\nport = 8883\n', cli={"broker.url": ("other", "--broker")})
    assert (s.broker.host, s.broker.tls, s.broker.effective_port) == ("other", True, 8883)


# -- broker URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://h", {"broker.host": "h", "broker.port": 1883, "broker.transport": "tcp", "broker.tls": False}),
        ("mqtts://h", {"broker.host": "h", "broker.port": 8883, "broker.transport": "tcp", "broker.tls": True}),
        ("MQTTS://h:9000", {"broker.host": "h", "broker.port": 9000, "broker.transport": "tcp", "broker.tls": True}),
        ("ws://h", {"broker.host": "h", "broker.port": 80, "broker.transport": "websockets", "broker.tls": False}),
        ("wss://h:8443/mqtt", {"broker.host": "h", "broker.port": 8443, "broker.transport": "websockets",
                               "broker.tls": True, "broker.ws_path": "/mqtt"}),
        ("h.example", {"broker.host": "h.example"}),
        ("h.example:1884", {"broker.host": "h.example", "broker.port": 1884}),
        (" 127.0.0.1:1885 ", {"broker.host": "127.0.0.1", "broker.port": 1885}),
        ("mqtt://u%40x:p%3Aw@h:1", {"broker.host": "h", "broker.port": 1, "broker.transport": "tcp",
                                    "broker.tls": False, "broker.username": "u@x", "broker.password": "p:w"}),
        ("bob:secret@h", {"broker.host": "h", "broker.username": "bob", "broker.password": "secret"}),
    ],
)
def test_expand_broker_url(url: str, expected: dict[str, Any]) -> None:
    assert expand_broker_url(url) == expected


@pytest.mark.parametrize("url", ["http://h", "tls://h", "mqtt://h:notaport", "mqtt://h:70000", "mqtt://", "h:x"])
def test_expand_broker_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError):
        expand_broker_url(url)


def test_bad_url_in_env_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_raw(env={"SWARMBUS_BROKER_URL": "http://x"}, config_path=tmp_path / "absent.toml")


# -- broker settings --------------------------------------------------------------------------------


def test_password_file_read_and_newline_stripped(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    s = settings_from(tmp_path, SWARMBUS_BROKER_PASSWORD_FILE=str(pw))
    assert s.broker.password is None and s.broker.password_file == pw
    assert s.broker.resolved_password() == "s3cret"
    pw.write_text("with space \r\n")
    assert s.broker.resolved_password() == "with space "


def test_password_file_unreadable(tmp_path: Path) -> None:
    b = BrokerSettings(password_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match="missing"):
        b.resolved_password()
    assert BrokerSettings().resolved_password() is None


def test_password_and_password_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="password"):
        settings_from(tmp_path, SWARMBUS_BROKER_PASSWORD="x", SWARMBUS_BROKER_PASSWORD_FILE=str(tmp_path / "pw"))


def test_password_is_secret(tmp_path: Path) -> None:
    s = settings_from(tmp_path, MQTT_PASSWORD="hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.broker)


def test_certfile_without_keyfile_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        settings_from(tmp_path, MQTT_CERTFILE="/c.pem")
    with pytest.raises(ConfigError, match="together"):
        settings_from(tmp_path, SWARMBUS_BROKER_CLIENT_KEY="/k.pem")
    s = settings_from(tmp_path, MQTT_CERTFILE="/c.pem", MQTT_KEYFILE="/k.pem")
    assert s.broker.tls is True


def test_ca_certs_implies_tls(tmp_path: Path) -> None:
    s = settings_from(tmp_path, SWARMBUS_BROKER_CA_CERT="~/ca.pem")
    assert s.broker.tls is True
    assert s.broker.ca_certs == Path("~/ca.pem").expanduser()
    assert s.broker.effective_port == 8883


def test_effective_port_defaults() -> None:
    assert BrokerSettings().effective_port == 1883
    assert BrokerSettings(tls=True).effective_port == 8883
    assert BrokerSettings(transport="websockets").effective_port == 80
    assert BrokerSettings(transport="websockets", tls=True).effective_port == 443
    assert BrokerSettings(port=1234, tls=True).effective_port == 1234
    assert BrokerSettings().url == "mqtt://localhost:1883"


def test_broker_field_validation(tmp_path: Path) -> None:
    for env in ({"MQTT_PORT": "0"}, {"MQTT_PORT": "70000"}, {"SWARMBUS_BROKER_PROTOCOL": "4"},
                {"MQTT_CLIENT_ID_PREFIX": "has space"}, {"SWARMBUS_BROKER_TRANSPORT": "udp"}):
        with pytest.raises(ConfigError):
            settings_from(tmp_path, **env)


# -- other sections ----------------------------------------------------------------------------------


def test_wake_policy_alias_and_command_split(tmp_path: Path) -> None:
    assert WakeSettings(policy="priority-high").policy == "high"
    s = settings_from(tmp_path, '[wake]\npolicy = "priority-high"\ncommand = "notify --to \'my agent\'"\n')
    assert s.wake.policy == "high"
    assert s.wake.command == ["notify", "--to", "my agent"]
    s = settings_from(tmp_path, '[wake]\npolicy = "all"\ncommand = ["a", "b c"]\n')
    assert (s.wake.policy, s.wake.command) == ("all", ["a", "b c"])
    assert WakeSettings(command="   ").command is None
    with pytest.raises(ConfigError):
        settings_from(tmp_path, '[wake]\npolicy = "sometimes"\n')
    s = settings_from(tmp_path, cli={"wake.command": ("run-me 'x y'", "--invoke")})
    assert s.wake.command == ["run-me", "x y"]


def test_defaults(tmp_path: Path) -> None:
    s = settings_from(tmp_path)
    assert s.agent_id is None and s.broker.host == "localhost" and s.broker.client_id_prefix == "swarmbus"
    assert s.broker.protocol == "auto" and s.broker.keepalive == 60
    assert s.daemon.session_expiry == 7 * 24 * 3600 and s.daemon.archive is True
    assert s.wake.policy == "high" and s.wake.command is None
    assert s.log_format == "text" and s.log_level == "info"
    with pytest.raises(UsageError):
        s.require_agent_id()


def test_agent_id_validated(tmp_path: Path) -> None:
    assert settings_from(tmp_path, SWARMBUS_AGENT_ID="coder").require_agent_id() == "coder"
    for bad in ("Coder", "broadcast", "system", "a" * 65):
        with pytest.raises(ConfigError, match="agent_id"):
            settings_from(tmp_path, SWARMBUS_AGENT_ID=bad)


def test_log_level_case_insensitive(tmp_path: Path) -> None:
    assert settings_from(tmp_path, SWARMBUS_LOG_LEVEL="DEBUG").log_level == "debug"


def test_full_file(tmp_path: Path) -> None:
    s = settings_from(tmp_path, """
agent_id = "coder"
state_dir = "/tmp/sb-state"
log_format = "json"
outbox = "~/sync/{agent_id}-outbox.md"

[broker]
url = "mqtts://broker.example:8884"
username = "coder"
client_id_prefix = "team"
protocol = "3.1.1"

[daemon]
handler_concurrency = 2
store_sync = "full"
archive = false

[wake]
policy = "none"
""")
    assert s.agent_id == "coder" and s.state_dir == Path("/tmp/sb-state")
    assert (s.broker.host, s.broker.effective_port, s.broker.tls) == ("broker.example", 8884, True)
    assert s.broker.protocol == "3.1.1" and s.broker.client_id_prefix == "team"
    assert s.daemon.handler_concurrency == 2 and s.daemon.store_sync == "full" and s.daemon.archive is False
    assert s.wake.policy == "none" and s.outbox == "~/sync/{agent_id}-outbox.md"


# -- file errors -----------------------------------------------------------------------------------


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nhostname = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={CONFIG_ENV: str(path)})
    assert "broker.hostname" in str(info.value) and str(path) in str(info.value)
    path = write(tmp_path, 'agentid = "x"\n')
    with pytest.raises(ConfigError, match="agentid") as info:
        load_settings(env={CONFIG_ENV: str(path)})
    assert str(path) in str(info.value)


def test_wrong_type_names_key_and_source(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nport = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={CONFIG_ENV: str(path)})
    assert "broker.port" in str(info.value) and str(path) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker\nhost = \n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_raw(env={}, config_path=path)
    assert str(path) in str(info.value)


def test_missing_swarmbus_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="SWARMBUS_CONFIG"):
        load_raw(env={CONFIG_ENV: str(missing)})
    with pytest.raises(ConfigError):
        load_settings(env={CONFIG_ENV: str(missing)})


def test_absent_default_file_is_fine(tmp_path: Path) -> None:
    raw = load_raw(env={}, config_path=tmp_path / "absent.toml")
    assert not raw.config_exists and raw.values == {}


def test_default_config_path(tmp_path: Path) -> None:
    assert default_config_path({CONFIG_ENV: str(tmp_path / "c.toml")}) == tmp_path / "c.toml"
    assert default_config_path({CONFIG_ENV: "~/x.toml"}) == Path("~/x.toml").expanduser()
    default = default_config_path({})
    assert default.name == "config.toml" and default.parent.name == "swarmbus"


# -- plugin sections -------------------------------------------------------------------------------


def test_plugin_sections_passed_through(tmp_path: Path) -> None:
    path = write(tmp_path, '[plugins.telegram]\nchat_id = 42\ntoken_file = "~/t"\n\n[plugins.other]\nx = [1]\n')
    raw = load_raw(env={}, config_path=path)
    assert raw.plugin_sections == {"telegram": {"chat_id": 42, "token_file": "~/t"}, "other": {"x": [1]}}
    assert raw.plugin_sources["telegram"] == f"file:{path}"
    assert not any(k.startswith("plugins") for k in raw.values)
    s = build_settings(raw)
    assert s.plugin_config("telegram") == {"chat_id": 42, "token_file": "~/t"}
    assert s.plugin_config("absent") is None


def test_plugin_sections_validated_by_models(tmp_path: Path) -> None:
    class Telegram(BaseModel):
        chat_id: int
        silent: bool = False

    path = write(tmp_path, "[plugins.telegram]\nchat_id = 42\n")
    s = build_settings(load_raw(env={}, config_path=path), {"telegram": Telegram})
    section = s.plugin_config("telegram")
    assert isinstance(section, Telegram) and section.chat_id == 42 and section.silent is False
    # a registered model without a section gets its defaults validated (here: chat_id missing)
    with pytest.raises(ConfigError, match=r"plugins\.telegram\.chat_id"):
        build_settings(load_raw(env={}, config_path=write(tmp_path, "", "empty.toml")), {"telegram": Telegram})
    bad = write(tmp_path, '[plugins.telegram]\nchat_id = "x"\n', "bad.toml")
    with pytest.raises(ConfigError, match=r"plugins\.telegram\.chat_id"):
        build_settings(load_raw(env={}, config_path=bad), {"telegram": Telegram})


def test_plugin_section_must_be_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins]\ntelegram = 5\n")
    with pytest.raises(ConfigError, match="plugins"):
        load_raw(env={}, config_path=path)


def test_env_for_helper_roundtrip(tmp_path: Path) -> None:
    s = load_settings(env=env_for(tmp_path, SWARMBUS_AGENT_ID="coder"))[0]
    assert s.agent_id == "coder"
