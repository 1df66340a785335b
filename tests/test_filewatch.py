"""filewatch.Watched: a value loaded from files, loaded again when they change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dcr_sidecar.filewatch import Watched


def replace(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def watch_text(path: Path, errors: list[Exception] | None = None) -> Watched[str]:
    def load() -> str:
        text = path.read_text()
        if "bad" in text:
            raise ValueError("bad content")
        return text

    return Watched([str(path)], load,
                   on_error=errors.append if errors is not None else None)


def test_a_file_replaced_by_rename_is_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("one")
    watched = watch_text(path)
    assert watched.get() == "one"
    replace(path, "two")
    assert watched.get() == "two"
    assert watched.reloads == 1


def test_a_file_rewritten_in_place_with_another_size_is_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("one")
    watched = watch_text(path)
    assert watched.get() == "one"
    path.write_text("three")
    assert watched.get() == "three"


def test_unchanged_files_are_not_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("one")
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        return path.read_text()

    watched = Watched([str(path)], load)
    for _ in range(5):
        assert watched.get() == "one"
    assert len(loads) == 1


def test_a_kubernetes_style_symlink_swap_is_a_change(tmp_path: Path) -> None:
    """..data -> ..v1 swapped to ..v2, the file a symlink through ..data (a mounted volume)."""
    for version, text in (("..v1", "one"), ("..v2", "two")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "ca.pem").write_text(text)
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "ca.pem").symlink_to("..data/ca.pem")
    watched = watch_text(tmp_path / "ca.pem")
    assert watched.get() == "one"
    (tmp_path / "..tmp").symlink_to("..v2")
    os.replace(tmp_path / "..tmp", tmp_path / "..data")
    assert watched.get() == "two"


def test_a_file_added_to_a_watched_directory_is_a_change(tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_text("a")
    watched = Watched([str(tmp_path)], lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert watched.get() == ["a.pem"]
    (tmp_path / "b.pem").write_text("b")
    assert watched.get() == ["a.pem", "b.pem"]


def test_content_that_fails_to_load_keeps_the_last_good_value(tmp_path: Path) -> None:
    """The failure is reported once per change; the next good change is taken."""
    path = tmp_path / "value"
    path.write_text("one")
    errors: list[Exception] = []
    watched = watch_text(path, errors)
    assert watched.get() == "one"
    replace(path, "bad!")
    assert watched.get() == "one"
    assert watched.get() == "one"
    assert [str(e) for e in errors] == ["bad content"]
    replace(path, "good again")
    assert watched.get() == "good again"


def test_nothing_ever_loaded_raises_the_load_error(tmp_path: Path) -> None:
    watched = watch_text(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        watched.get()
    (tmp_path / "missing").write_text("here now")
    assert watched.get() == "here now"


def test_interval_limits_how_often_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "value"
    path.write_text("one")
    watched = Watched([str(path)], path.read_text, interval=3600)
    assert watched.get() == "one"
    replace(path, "two")
    assert watched.get() == "one"  # not checked again within the hour
