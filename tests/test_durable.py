"""mtsae/durable.py: the one atomic publish that checkpoints, run files and the embedded assets use."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from mtsae.durable import materialise_dir, materialise_file, publish_dir, publish_file, write_text_atomic


def _write(files: dict[str, str]):
    def build(root: Path) -> None:
        for name, text in files.items():
            (root / name).write_text(text)
    return build


def test_publish_dir_replaces_an_existing_folder_and_leaves_no_temporary(tmp_path):
    final = tmp_path / "ckpt"
    publish_dir(final, _write({"a": "old", "b": "old"}))
    publish_dir(final, _write({"a": "new"}))
    assert sorted(p.name for p in final.iterdir()) == ["a"] and (final / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp- nor .old- left


def test_a_failed_build_keeps_the_old_folder_and_removes_its_temporary(tmp_path):
    final = tmp_path / "ckpt"
    publish_dir(final, _write({"a": "old"}))

    def crash(root: Path) -> None:
        (root / "a").write_text("half")
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        publish_dir(final, crash)
    assert (final / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_materialise_dir_builds_once_and_replaces_an_incomplete_folder(tmp_path):
    final = tmp_path / "asset"
    final.mkdir()
    (final / "partial").write_text("x")  # a leftover without the marker
    calls = []

    def build(root: Path) -> None:
        calls.append(root)
        (root / "done").write_text("1")

    complete = lambda path: (path / "done").is_file()  # noqa: E731
    assert materialise_dir(final, build, complete=complete) == final
    assert materialise_dir(final, build, complete=complete) == final
    assert len(calls) == 1 and sorted(p.name for p in final.iterdir()) == ["done"]


def test_a_concurrent_builder_that_published_first_is_kept(tmp_path):
    final = tmp_path / "asset"
    complete = lambda path: (path / "done").is_file()  # noqa: E731

    def build_while_another_wins(root: Path) -> None:
        (root / "done").write_text("ours")
        publish_dir(final, _write({"done": "theirs"}))  # the other process renames first

    materialise_dir(final, build_while_another_wins, complete=complete)
    assert (final / "done").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset"]


def test_racing_threads_all_get_one_intact_copy(tmp_path):
    final = tmp_path / "asset"
    complete = lambda path: (path / "done").is_file()  # noqa: E731
    errors: list[BaseException] = []

    def one() -> None:
        try:
            materialise_dir(final, _write({"data": "x" * 1000, "done": "1"}), complete=complete)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and (final / "data").read_text() == "x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_published_files_get_the_umasks_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "run.json", "{}\n")
        materialise_file(tmp_path / "corpus.jsonl", lambda p: p.write_text("doc\n"))
    finally:
        os.umask(old)
    for name in ("run.json", "corpus.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_publish_file_replaces_whole_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "log.jsonl"
    write_text_atomic(target, "one\n")
    write_text_atomic(target, "two\n")

    def crash(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        publish_file(target, crash)
    assert target.read_text() == "two\n" and sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
    assert materialise_file(target, crash) == target  # a file exists only whole: it is reused, not rebuilt
