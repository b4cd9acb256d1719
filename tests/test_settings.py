from pathlib import Path

import pytest

from renderer.errors import ConfigError
from server.settings import Settings, load_settings


def test_defaults_are_embedded() -> None:
    s = load_settings({})
    assert s.database_url == "sqlite:///./trailguard.db"
    assert s.redis_url is None
    assert s.port == 8000


def test_values_are_parsed_and_typed() -> None:
    s = load_settings(
        {
            "TRAILGUARD_DATABASE_URL": "postgresql://u@db:5432/tg",
            "TRAILGUARD_REDIS_URL": "redis://cache:6379/1",
            "TRAILGUARD_PORT": "9000",
            "TRAILGUARD_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "TRAILGUARD_MODEL_DIR": "/srv/models",
            "TRAILGUARD_SMTP_STARTTLS": "yes",
        }
    )
    assert s.port == 9000
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.model_dir == Path("/srv/models")
    assert s.smtp_starttls is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRAILGUARD_DATABASE_URL", "mysql://x"),
        ("TRAILGUARD_DATABASE_URL", "not a url"),
        ("TRAILGUARD_REDIS_URL", "redis://:abc"),
        ("TRAILGUARD_REDIS_URL", "redis://host:port/0"),
        ("TRAILGUARD_PORT", "eighty"),
        ("TRAILGUARD_SMTP_STARTTLS", "maybe"),
        ("TRAILGUARD_SECRET_KEY", ""),
    ],
)
def test_malformed_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ":")


def test_secret_key_is_created_once(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    first = s.resolved_secret_key()
    assert len(first) > 40
    assert Settings(data_dir=tmp_path).resolved_secret_key() == first
