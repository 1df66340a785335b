"""The `store` block (design.md §2.2): redis URLs as secret fields, Sentinel forms, Fernet keys,
and the combinations that are rejected rather than silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from dcr_sidecar.config import Settings
from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.store import open_store
from dcr_sidecar.store.file import FileStore
from dcr_sidecar.store.records import RecordKey
from dcr_sidecar.store.redis import RedisStore
from tests.test_config import assert_names, config_error, parse

URL = "redis://:hunter2-pass@127.0.0.1:6390/1"


def store_yaml(body: str) -> str:
    return "version: 1\nstore:\n" + "".join(f"  {line}\n" for line in body.splitlines())


@pytest.mark.parametrize("source", ["env", "file", "plain"])
async def test_redis_url_is_a_secret_field(source: str, tmp_path: Path) -> None:
    env: dict[str, str] = {}
    if source == "env":
        url, env = "{env: REDIS_URL}", {"REDIS_URL": URL}
    elif source == "file":
        (tmp_path / "url").write_text(URL + "\n")
        url = f"{{file: {tmp_path / 'url'}}}"
    else:
        url = URL
    settings = parse(store_yaml(f"backend: redis\nurl: {url}\nkey_prefix: team-a/dcr"), env)
    assert settings.store.url == Secret(URL)
    assert "hunter2" not in repr(settings.store)
    store = open_store(settings.store)
    assert isinstance(store, RedisStore)
    assert store.shared
    assert store.record_key(RecordKey("https://as.example", "acme")).startswith("team-a/dcr:{acme:")
    assert "hunter2" not in store.target.describe()
    await store.close()


def test_sentinel_url_is_accepted() -> None:
    settings = parse(store_yaml("backend: redis\n"
                                "url: redis+sentinel://:pw@127.0.0.2:26379,127.0.0.3/mymaster/0"))
    assert settings.store.backend == "redis"


@pytest.mark.parametrize(("body", "path", "fragment"), [
    ("backend: redis", "store.url", "needs url"),
    ("backend: redis\nurl: http://:hunter2-pass@127.0.0.1:6390", "store.url", "redis://"),
    ("backend: redis\nurl: redis+sentinel://:hunter2-pass@h1:26379", "store.url",
     "service name"),
    (f"backend: file\nurl: {URL}", "store.url", "backend: redis"),
    ("backend: redis\nurl: redis://h/0\nkey_prefix: 'a{b}'", "store.key_prefix", "characters"),
])
def test_store_errors_name_the_path_and_mask_the_url(body: str, path: str,
                                                     fragment: str) -> None:
    message = config_error(store_yaml(body))
    assert f"{path}:" in message, message
    assert fragment in message
    assert "hunter2" not in message


def test_encryption_keys_must_be_fernet_keys_and_are_masked() -> None:
    good = Fernet.generate_key().decode()
    message = config_error(store_yaml(f"encryption_keys: [{good}, not-a-key-but-secret]"))
    assert_names(message, "store.encryption_keys", MASK)
    assert "Fernet" in message
    assert "not-a-key-but-secret" not in message
    assert good not in message


def test_encryption_keys_from_env_and_file_newest_first(tmp_path: Path) -> None:
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    (tmp_path / "old").write_text(old + "\n")
    settings = parse(store_yaml(
        f"encryption_keys: [{{env: NEW_KEY}}, {{file: {tmp_path / 'old'}}}, "
        "{env: RETIRED, optional: true}]"), {"NEW_KEY": new})
    assert settings.store.encryption_keys == [Secret(new), Secret(old)]
    store = open_store(settings.store)
    assert isinstance(store, FileStore)
    assert store.sealer.enabled


def test_encryption_keys_on_the_memory_store_are_rejected() -> None:
    key = Fernet.generate_key().decode()
    message = config_error(store_yaml(f"backend: memory\nencryption_keys: [{key}]"))
    assert "store.encryption_keys:" in message
    assert key not in message


def test_lease_settings() -> None:
    settings: Settings = parse(store_yaml("backend: redis\nurl: redis://h/0\n"
                                          "lease: {ttl: 5, wait: 2}"))
    assert (settings.store.lease.ttl, settings.store.lease.wait) == (5, 2)
    assert "store.lease.ttl:" in config_error(store_yaml("lease: {ttl: 0}"))
