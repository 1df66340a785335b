"""The one serializer (store/records.py): schema versions, sealed secret fields, key checks,
resealing on rotation — and the file store built on it (design.md §3.4, §3.9)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.errors import KeyMismatch, StoreCorrupt, StoreError, StoreUnreachable
from dcr_sidecar.store.file import FileStore
from dcr_sidecar.store.records import (
    PLAIN,
    PLAIN_SCHEMA,
    SCHEMA,
    Generation,
    Record,
    RecordKey,
    Sealer,
    record_from_json,
    record_to_json,
    resealed,
)

KEY = RecordKey("https://as.example", "acme")
SECRET = "client-secret-0123456789"
RAT = "registration-token-0123456789"


def fernet_key() -> str:
    return Fernet.generate_key().decode()


def sealer(*keys: str) -> Sealer:
    return Sealer([Secret(k) for k in keys])


def record(client_id: str = "cid-1") -> Record:
    return Record(KEY, (Generation(1, "fp", client_id, Secret(SECRET), "client_secret_basic",
                                   registration_access_token=Secret(RAT),
                                   registration_client_uri="https://as.example/reg/1"),))


def secrets_of(rec: Record) -> tuple[str | None, ...]:
    gen = rec.generations[0]
    return tuple(s.reveal() if s else None
                 for s in (gen.client_secret, gen.registration_access_token))


def test_plaintext_record_is_schema_1_and_round_trips() -> None:
    """Without keys the stored form is what versions before encryption read."""
    data = record_to_json(record())
    assert data["schema"] == PLAIN_SCHEMA
    assert data["generations"][0]["client_secret"] == SECRET
    assert secrets_of(record_from_json(data)) == (SECRET, RAT)


def test_sealed_record_holds_no_secret_and_round_trips() -> None:
    key = fernet_key()
    data = record_to_json(record(), sealer(key))
    raw = json.dumps(data)
    assert data["schema"] == SCHEMA
    assert SECRET not in raw
    assert RAT not in raw
    assert "fernet" in data["generations"][0]["client_secret"]
    assert data["generations"][0]["client_id"] == "cid-1"  # only secrets are sealed
    assert secrets_of(record_from_json(data, sealer(key))) == (SECRET, RAT)


def test_a_private_key_jwt_key_is_sealed_too() -> None:
    """The private_key_jwt key pair is a secret of the record like the client secret."""
    from dataclasses import replace

    jwk = json.dumps({"kty": "EC", "crv": "P-256", "d": "private-scalar-0123456789abcdef",
                      "x": "xx", "y": "yy"})
    rec = record()
    rec = Record(KEY, (replace(rec.generations[0], private_key=Secret(jwk)),))
    key = fernet_key()
    raw = json.dumps(record_to_json(rec, sealer(key)))
    assert "private-scalar" not in raw
    back = record_from_json(json.loads(raw), sealer(key)).generations[0].private_key
    assert back is not None
    assert back.reveal() == jwk


@pytest.mark.parametrize("reader", ["no keys", "other key"])
def test_sealed_record_is_unreadable_without_its_key(reader: str) -> None:
    data = record_to_json(record(), sealer(fernet_key()))
    with pytest.raises(StoreCorrupt) as caught:
        record_from_json(data, PLAIN if reader == "no keys" else sealer(fernet_key()))
    assert SECRET not in str(caught.value)


def test_newer_schema_is_refused_not_guessed() -> None:
    data = record_to_json(record())
    data["schema"] = SCHEMA + 1
    with pytest.raises(StoreCorrupt, match="schema"):
        record_from_json(data)


@pytest.mark.parametrize("data", [{"upstream": "acme"}, {"issuer": "x", "upstream": "a",
                                                         "generations": [42]},
                                  {"issuer": "x", "upstream": "a",
                                   "generations": [{"client_secret": {"nope": 1}}]}])
def test_malformed_records_fail_typed(data: dict[str, Any]) -> None:
    with pytest.raises(StoreCorrupt):
        record_from_json(data)


def test_plaintext_secrets_are_read_when_encryption_is_switched_on() -> None:
    key = fernet_key()
    plain = record_to_json(record())
    assert secrets_of(record_from_json(plain, sealer(key))) == (SECRET, RAT)
    again = resealed(plain, sealer(key))
    assert again is not None
    assert SECRET not in json.dumps(again)


def test_rotation_reads_old_keys_and_reseals_under_the_newest() -> None:
    old, new = fernet_key(), fernet_key()
    data = record_to_json(record(), sealer(old))
    rotated = sealer(new, old)
    assert secrets_of(record_from_json(data, rotated)) == (SECRET, RAT)
    again = resealed(data, rotated)
    assert again is not None
    assert secrets_of(record_from_json(again, sealer(new))) == (SECRET, RAT)  # old key gone
    assert resealed(again, rotated) is None  # already current: nothing to rewrite


def test_key_check_states() -> None:
    old, new = fernet_key(), fernet_key()
    check = sealer(old).key_check()
    assert sealer(old).check_keys(None) == "absent"
    assert sealer(old).check_keys(check) == "current"
    assert sealer(new, old).check_keys(check) == "older_key"
    with pytest.raises(KeyMismatch, match="not the keys"):
        sealer(new).check_keys(check)
    with pytest.raises(KeyMismatch, match="encryption_keys is empty"):
        PLAIN.check_keys(check)


# ---------------------------------------------------------------------------- file store

async def put(store: FileStore, rec: Record) -> None:
    async with store.lock(rec.key):
        await store.put(rec)


async def test_file_store_without_keys_writes_nothing_at_open(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "c.json"))
    await store.open()
    assert not (tmp_path / "c.json").exists()
    await put(store, record())
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == PLAIN_SCHEMA


async def test_file_store_encrypted_at_rest_with_key_check(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    key = fernet_key()
    store = FileStore(str(path), sealer(key))
    await store.open()
    assert "key_check" in json.loads(path.read_text())  # written on first start
    await put(store, record())
    text = path.read_text()
    assert SECRET not in text
    assert RAT not in text
    assert json.loads(text)["schema"] == SCHEMA
    got = await store.get(KEY)
    assert got is not None
    assert secrets_of(got) == (SECRET, RAT)
    assert path.stat().st_mode & 0o777 == 0o600


async def test_file_store_wrong_key_fails_open_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    first = FileStore(str(path), sealer(fernet_key()))
    await first.open()
    await put(first, record())
    before = path.read_bytes()
    for wrong in (sealer(fernet_key()), PLAIN):
        with pytest.raises(KeyMismatch):
            await FileStore(str(path), wrong).open()
    assert path.read_bytes() == before


async def test_file_store_rotation_reseals_at_open(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    old, new = fernet_key(), fernet_key()
    first = FileStore(str(path), sealer(old))
    await first.open()
    await put(first, record())
    rotated = FileStore(str(path), sealer(new, old))
    await rotated.open()
    only_new = FileStore(str(path), sealer(new))
    await only_new.open()  # the key check was rewritten under the new key
    got = await only_new.get(KEY)
    assert got is not None
    assert secrets_of(got) == (SECRET, RAT)


async def test_file_store_encryption_switched_on_seals_existing_records(
        tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    plain = FileStore(str(path))
    await put(plain, record())
    assert SECRET in path.read_text()
    await FileStore(str(path), sealer(fernet_key())).open()
    assert SECRET not in path.read_text()


async def test_file_store_never_overwrites_a_record_that_will_not_decrypt(
        tmp_path: Path) -> None:
    """A record sealed under a key this process lacks: reads fail typed, writes of other
    records leave its bytes alone, and open() does not touch it."""
    path = tmp_path / "c.json"
    key, foreign = fernet_key(), fernet_key()
    store = FileStore(str(path), sealer(key))
    await store.open()
    doc = json.loads(path.read_text())
    alien = record_to_json(record("alien"), sealer(foreign))
    doc["records"]["alien https://as.example"] = alien
    path.write_text(json.dumps(doc))
    reopened = FileStore(str(path), sealer(key))
    await reopened.open()
    with pytest.raises(StoreCorrupt):
        await reopened.get(RecordKey("https://as.example", "alien"))
    await put(reopened, record())
    assert json.loads(path.read_text())["records"]["alien https://as.example"] == alien


async def test_file_store_newer_document_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schema": SCHEMA + 1, "records": {}}))
    store = FileStore(str(path))
    await store.open()  # logged; reads fail typed
    with pytest.raises(StoreCorrupt):
        await store.get(KEY)
    assert json.loads(path.read_text())["schema"] == SCHEMA + 1


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "sealed"])
async def test_file_store_record_with_non_utf8_bytes_is_corrupt_and_kept_byte_for_byte(
        tmp_path: Path, encrypted: bool) -> None:
    """Bytes that are not UTF-8 inside one record: open() and check() succeed (before: a
    UnicodeDecodeError), that record reads as StoreCorrupt, other records read and write, and
    its bytes are written back unchanged."""
    path = tmp_path / "c.json"
    keys = (fernet_key(),) if encrypted else ()
    store = FileStore(str(path), sealer(*keys))
    await put(store, record("victim"))
    other = RecordKey("https://as.example", "other")
    raw = path.read_bytes().replace(b'"victim"', b'"vic\xfftim\xc3"')
    path.write_bytes(raw)
    reopened = FileStore(str(path), sealer(*keys))
    await reopened.open()
    assert await reopened.check() is None
    with pytest.raises(StoreCorrupt, match="not UTF-8"):
        await reopened.get(KEY)
    await reopened.put(Record(other, record().generations))
    assert await reopened.get(other) is not None
    assert b'"vic\xfftim\xc3"' in path.read_bytes()


def test_a_record_with_a_lone_surrogate_escape_is_corrupt() -> None:
    data = record_to_json(record())
    data["generations"][0]["client_id"] = "\ud800"
    with pytest.raises(StoreCorrupt, match="not UTF-8"):
        record_from_json(data)


@pytest.mark.parametrize("lock", ["document", "key"])
async def test_file_store_lock_files_never_follow_a_planted_symlink(
        tmp_path: Path, lock: str) -> None:
    """A symlink planted where a lock file goes (the document's or a key's): the store refuses
    it (ELOOP, raised as the store error StoreUnreachable) and the link's target is neither
    created nor touched (O_NOFOLLOW; before: the target was created)."""
    path = tmp_path / "c.json"
    store = FileStore(str(path))
    await put(store, record())
    target = tmp_path / "elsewhere" / "victim"
    target.parent.mkdir()
    name = "document" if lock == "document" else hashlib.sha256(str(KEY).encode()).hexdigest()[:16]
    link = tmp_path / f".c.json.{name}.lock"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    with pytest.raises(StoreUnreachable, match="symbolic link"):
        await put(store, record("cid-2"))
    assert not target.exists()


async def test_file_store_refuses_a_directory_writable_by_others(tmp_path: Path) -> None:
    """A store directory writable by others (a planted link or file is one step away): open()
    fails with an error naming the directory and its mode; reads and writes too."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    store = FileStore(str(directory / "c.json"))
    with pytest.raises(StoreError, match=rf"{directory} is writable by others \(mode 0777\)"):
        await store.open()
    with pytest.raises(StoreError):
        await store.get(KEY)
    assert await store.check() is not None
    directory.chmod(0o1777)  # the sticky bit does not make it the sidecar's own
    with pytest.raises(StoreError):
        await FileStore(str(directory / "c.json")).open()
    assert list(directory.iterdir()) == []


def test_generation_numbers_never_repeat_after_the_newest_is_deleted() -> None:
    """The record keeps its high-water mark: deleting generation 2 and registering again gives
    3, also after a round trip through the serializer; a record written before the mark
    existed counts on from its newest generation."""
    two = record().with_generation(Generation(2, "fp", "cid-2", None, "none"), 1.0)
    emptied = two.without(2).without(1)
    assert emptied.generations == ()
    assert emptied.next_number() == 3
    assert record_from_json(record_to_json(emptied)).next_number() == 3
    legacy = record_to_json(two)
    del legacy["last_generation"]
    assert record_from_json(legacy).next_number() == 3
    with pytest.raises(StoreCorrupt):
        record_from_json({**legacy, "last_generation": "7"})
