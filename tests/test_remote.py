"""Caches at s3:// URLs, against a real S3-compatible server (moto's server mode) on loopback.

Only the network is "broken" on purpose (s3fs calls that fail after N objects, as a dropped
connection would); mtsae's own code always runs for real.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from conftest import TINY_HARVEST, tiny_harvest  # noqa: E402
from mtsae.cache import open_cache, read_attrs  # noqa: E402
from mtsae.cache import format as fmt  # noqa: E402
from mtsae.cache import remote  # noqa: E402
from mtsae.cache.transfer import pull, push  # noqa: E402
from mtsae.cache.verify import verify_cache  # noqa: E402
from mtsae.cli import app  # noqa: E402
from mtsae.errors import MtsaeError  # noqa: E402

BUCKET = "mtsae-tests"
TRAIN_SMALL = ["--arch", "relu", "--d-sae", "32", "--steps", "2", "--window", "16", "--batch-windows", "4",
               "--eval-every", "0", "--eval-tokens", "64", "--holdout-fraction", "0.1", "--no-progress"]
HARVEST_SMALL = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_HARVEST.items()] + ["--no-progress"]

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_filesystem_instances() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port, reached through the usual AWS_* variables."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _clear_filesystem_instances()
    fs, _ = remote.filesystem(f"s3://{BUCKET}")
    fs.mkdir(BUCKET)
    yield endpoint
    _clear_filesystem_instances()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    server.stop()


@pytest.fixture
def url(s3_endpoint, request) -> str:
    """A fresh prefix per test."""
    return f"s3://{BUCKET}/{request.node.name.replace('[', '-').strip(']')}"


@pytest.fixture(scope="session")
def pushed(s3_endpoint, tiny_cache_path) -> str:
    """The tiny cache, pushed once, for tests that only read it."""
    target = f"s3://{BUCKET}/shared-read-only/tiny"
    push(str(tiny_cache_path), target, log=lambda _line: None, progress=False)
    return target


def cli(*args, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250", **(env or {})})


def _fs():
    return remote.filesystem(f"s3://{BUCKET}")[0]


def _key(url: str, key: str) -> str:
    return f"{url.removeprefix('s3://')}/{key}"


def _fail_after(monkeypatch, method: str, n: int) -> None:
    """Make the n+1-th and later calls of an s3fs transfer method fail, as a dropped connection would."""
    import s3fs

    original, calls = getattr(s3fs.S3FileSystem, method), {"n": 0}

    async def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise ConnectionResetError("connection dropped (test)")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, method, flaky)
    _clear_filesystem_instances()  # instances bind their sync wrappers when made


def _reconnect(monkeypatch) -> None:
    monkeypatch.undo()
    _clear_filesystem_instances()


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- push, inspect, pull, train --------------------------------------------------------------------------
def test_push_inspect_pull_then_train(tiny_cache_path, url, tmp_path):
    result = cli("cache", "push", tiny_cache_path, url, "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == url

    info = cli("cache", "info", url)
    assert info.exit_code == 0 and "status       complete" in info.stdout
    assert read_attrs(url)["checksums"] == read_attrs(tiny_cache_path)["checksums"]
    listing = cli("cache", "ls", url.rsplit("/", 1)[0])
    assert listing.exit_code == 0 and url in listing.stdout and "complete" in listing.stdout
    verified = cli("cache", "verify", url, "--no-progress")
    assert verified.exit_code == 0 and verified.stdout.startswith("ok:"), verified.output

    again = cli("cache", "push", tiny_cache_path, url, "--no-progress")
    assert again.exit_code == 0 and "already holds this cache" in again.stderr

    dest = tmp_path / "pulled"
    pulled = cli("cache", "pull", url, dest, "--no-progress")
    assert pulled.exit_code == 0, pulled.output
    assert _chunk_files(dest) == _chunk_files(tiny_cache_path)  # byte for byte, and no lock or partial file left
    assert verify_cache(dest) == []

    run = tmp_path / "run"
    trained = cli("train", "--cache", dest, "--out", run, *TRAIN_SMALL)
    assert trained.exit_code == 0, trained.output
    assert (run / "final").is_dir()


def test_both_format_versions_push_verify_and_pull(url, tmp_path):
    """The committed version-1 cache travels as it is; upgraded to version 2 it travels too."""
    v1 = tmp_path / "v1"
    shutil.copytree(Path(__file__).parent / "data" / "cache-v1", v1)
    for version, source, target in ((1, v1, f"{url}/v1"), (2, v1, f"{url}/v2")):
        if version == 2:
            assert cli("cache", "upgrade", v1).exit_code == 0
        assert cli("cache", "push", source, target, "--no-progress").exit_code == 0
        verified = cli("cache", "verify", target, "--no-progress")
        assert verified.exit_code == 0 and "ok:" in verified.stdout, verified.output
        dest = tmp_path / f"pulled-v{version}"
        pulled = cli("cache", "pull", target, dest, "--no-progress")
        assert pulled.exit_code == 0, pulled.output
        assert _chunk_files(dest) == _chunk_files(source) and verify_cache(dest) == []
        copy, original = open_cache(dest), open_cache(source)
        assert copy.manifest["format_version"] == version and copy.fingerprint == original.fingerprint
        assert np.array_equal(copy.rows(19, 0, copy.n_tokens), original.rows(19, 0, original.n_tokens))


def test_pull_defaults_to_the_content_address(pushed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("cache", "pull", pushed, "--no-progress")
    assert result.exit_code == 0, result.output
    expected = Path("caches") / read_attrs(pushed)["fingerprint"][:12]
    assert result.stdout.strip() == str(expected) and open_cache(expected).complete


# --- damage and interruption ----------------------------------------------------------------------------
def test_verify_catches_altered_and_deleted_remote_chunks_and_pull_refuses_them(tiny_cache_path, url, tmp_path):
    push(str(tiny_cache_path), url, log=lambda _line: None, progress=False)
    fs = _fs()
    altered = _key(url, "activations/blocks.19.hook_resid_post/c/2/0")
    data = bytearray(fs.cat_file(altered))
    data[100] ^= 0x01
    fs.pipe_file(altered, bytes(data))
    fs.rm_file(_key(url, "tokens/c/3"))

    result = cli("cache", "verify", url, "--no-progress")
    assert result.exit_code == 1
    assert "activations/blocks.19.hook_resid_post chunk 2: altered" in result.stdout
    assert "tokens chunk 3: missing" in result.stdout
    assert result.stderr.strip().startswith("error: ") and "2 problem(s)" in result.stderr

    dest = tmp_path / "copy"
    pulled = cli("cache", "pull", url, dest, "--no-progress")
    assert pulled.exit_code == 1 and "do not match its manifest" in pulled.stderr
    assert pulled.stderr.strip().splitlines()[-1].startswith("error: ") and pulled.stderr.count("error") == 1
    assert read_attrs(dest)["status"] == fmt.STATUS_INCOMPLETE  # a damaged copy never looks complete
    assert not (dest / "activations/blocks.19.hook_resid_post/c/2/0").exists()  # deleted: a re-pull fetches it again


def test_half_pushed_cache_is_incomplete_and_push_resumes(tiny_cache_path, url, monkeypatch):
    _fail_after(monkeypatch, "_put_file", 10)
    with pytest.raises(MtsaeError, match="connection dropped"):
        push(str(tiny_cache_path), url, log=lambda _line: None, progress=False, jobs=1)
    _reconnect(monkeypatch)

    assert read_attrs(url)["status"] == fmt.STATUS_INCOMPLETE
    with pytest.raises(MtsaeError, match="incomplete"):
        open_cache(url)
    info = cli("cache", "info", url)
    assert "status       incomplete" in info.stdout and "an unfinished copy of" in info.stdout
    refused = cli("cache", "pull", url, "--no-progress")
    assert refused.exit_code == 1 and "incomplete" in refused.stderr

    logs: list[str] = []
    outcome = push(str(tiny_cache_path), url, log=logs.append, progress=False)
    assert outcome.skipped == 10 and outcome.copied > 0 and not outcome.already_complete
    assert any(line.startswith("resuming") for line in logs)
    assert read_attrs(url)["status"] == fmt.STATUS_COMPLETE
    assert verify_cache(url) == []


def test_resumed_push_reuploads_an_object_whose_md5_differs(tiny_cache_path, url, monkeypatch):
    _fail_after(monkeypatch, "_put_file", 10)
    with pytest.raises(MtsaeError):
        push(str(tiny_cache_path), url, log=lambda _line: None, progress=False, jobs=1)
    _reconnect(monkeypatch)
    fs = _fs()
    victim = next(name for name in fs.find(url) if "/c/" in name)
    data = bytearray(fs.cat_file(victim))
    data[0] ^= 0xFF  # same size, other bytes
    fs.pipe_file(victim, bytes(data))
    outcome = push(str(tiny_cache_path), url, log=lambda _line: None, progress=False)
    assert outcome.skipped == 9
    assert verify_cache(url) == []


def test_half_pulled_copy_is_incomplete_and_pull_resumes(pushed, tmp_path, monkeypatch):
    dest = tmp_path / "half"
    _fail_after(monkeypatch, "_get_file", 10)
    with pytest.raises(MtsaeError, match="connection dropped"):
        pull(pushed, str(dest), log=lambda _line: None, progress=False, jobs=1)
    _reconnect(monkeypatch)
    assert read_attrs(dest)["status"] == fmt.STATUS_INCOMPLETE
    with pytest.raises(MtsaeError, match="incomplete"):
        open_cache(dest)
    outcome = pull(pushed, str(dest), log=lambda _line: None, progress=False)
    assert outcome.skipped == 10 and open_cache(dest).complete and verify_cache(dest) == []


def test_pull_past_the_file_size_limit_is_one_line_and_resumes(pushed, tmp_path):
    import resource
    import signal
    import subprocess

    def file_size_limit() -> None:  # writes past it fail with EFBIG, as on a full disk, instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))  # above the root metadata, below a chunk

    dest = tmp_path / "limited"
    done = subprocess.run([sys.executable, "-m", "mtsae", "cache", "pull", pushed, str(dest), "--no-progress"],
                          preexec_fn=file_size_limit, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "file too large" in errors[0] and "re-run the same pull" in errors[0]
    assert "Traceback" not in done.stderr
    assert read_attrs(dest)["status"] == fmt.STATUS_INCOMPLETE
    pull(pushed, str(dest), log=lambda _line: None, progress=False)  # without the limit: finishes the copy
    assert open_cache(dest).complete and verify_cache(dest) == []


def test_destinations_that_are_not_this_cache_are_refused(tiny_cache_path, url, tmp_path):
    _fs().pipe_file(_key(url, "notes.txt"), b"someone else's data")
    foreign = cli("cache", "push", tiny_cache_path, url, "--no-progress")
    assert foreign.exit_code == 1 and "is not an mtsae cache" in foreign.stderr

    other = tmp_path / "other.zarr"
    tiny_harvest(other, max_tokens=1000)
    push(str(other), url + "-taken", log=lambda _line: None, progress=False)
    taken = cli("cache", "push", tiny_cache_path, url + "-taken", "--no-progress")
    assert taken.exit_code == 1 and "holds a different cache" in taken.stderr and "--force" in taken.stderr
    forced = cli("cache", "push", tiny_cache_path, url + "-taken", "--force", "--no-progress")
    assert forced.exit_code == 0, forced.output
    assert read_attrs(url + "-taken")["checksums"] == read_attrs(tiny_cache_path)["checksums"]


# --- harvest straight to S3 -------------------------------------------------------------------------------
def test_harvest_writes_to_s3_directly_and_resumes_there(tiny_cache_path, url, monkeypatch):
    _fail_after(monkeypatch, "_pipe_file", 40)  # chunks, metadata and progress marks: the connection drops midway
    with pytest.raises(MtsaeError, match="connection dropped"):
        tiny_harvest(url)
    _reconnect(monkeypatch)
    attrs = read_attrs(url)
    assert attrs["status"] == fmt.STATUS_INCOMPLETE and attrs["progress"]["tokens"] > 0

    result = cli("harvest", *HARVEST_SMALL, "--out", url)
    assert result.exit_code == 0, result.output
    assert "resuming the unfinished harvest" in result.stderr and result.stdout.strip() == url
    remote_attrs, local_attrs = read_attrs(url), read_attrs(tiny_cache_path)
    assert remote_attrs["fingerprint"] == local_attrs["fingerprint"]
    assert remote_attrs["checksums"] == local_attrs["checksums"]  # the same bytes as a local, uninterrupted harvest
    assert verify_cache(url) == []


def test_synth_writes_to_s3_with_every_chunk(url):
    result = cli("synth", "--out", url, "--n-sequences", 20, "--seq-len", 32, "--n-features", 16)
    assert result.exit_code == 0, result.output
    verified = cli("cache", "verify", url, "--no-progress")  # its all-zero token chunks are objects too
    assert verified.exit_code == 0, verified.output
    again = cli("synth", "--out", url)
    assert again.exit_code == 1 and "already exists" in again.stderr


# --- read-through ---------------------------------------------------------------------------------------
def test_train_reads_an_s3_cache_through_a_local_copy(pushed, tmp_path, monkeypatch):
    monkeypatch.setenv("MTSAE_REMOTE_CACHE_DIR", str(tmp_path / "remote-caches"))
    first = cli("train", "--cache", pushed, "--out", tmp_path / "run1", *TRAIN_SMALL)
    assert first.exit_code == 0, first.output
    copy = tmp_path / "remote-caches" / read_attrs(pushed)["fingerprint"][:12]
    assert "reading s3://" in first.stderr and open_cache(copy).complete
    second = cli("train", "--cache", pushed, "--out", tmp_path / "run2", *TRAIN_SMALL)
    assert second.exit_code == 0 and "reading s3://" not in second.stderr  # pulled once
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["config"]["cache"] == pushed


def test_read_through_size_guards(pushed, tmp_path, monkeypatch):
    monkeypatch.setenv("MTSAE_REMOTE_CACHE_DIR", str(tmp_path / "remote-caches"))
    monkeypatch.setenv("MTSAE_REMOTE_CACHE_MAX_GB", "0.0001")
    result = cli("train", "--cache", pushed, "--out", tmp_path / "run", *TRAIN_SMALL)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "over the read-through limit" in result.stderr and "MTSAE_REMOTE_CACHE_MAX_GB" in result.stderr
    assert not (tmp_path / "remote-caches").exists()

    monkeypatch.delenv("MTSAE_REMOTE_CACHE_MAX_GB")
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    full = cli("train", "--cache", pushed, "--out", tmp_path / "run", *TRAIN_SMALL)
    assert full.exit_code == 1 and "are free at" in full.stderr and full.stderr.count("error: ") == 1
    assert read_attrs(tmp_path / "remote-caches" / read_attrs(pushed)["fingerprint"][:12]) is None


# --- shared root ------------------------------------------------------------------------------------------
def test_shared_root_is_reused_and_published(tiny_cache_path, url, tmp_path):
    empty = cli("harvest", *HARVEST_SMALL, "--out", tiny_cache_path, "--shared-root", url)  # nothing there yet
    assert empty.exit_code == 0, empty.output
    address = f"{url}/{read_attrs(tiny_cache_path)['fingerprint'][:12]}"
    assert read_attrs(address)["status"] == fmt.STATUS_COMPLETE  # published after the (skipped) harvest

    fresh = tmp_path / "fresh"
    reused = cli("harvest", *HARVEST_SMALL, "--out", fresh, env={"MTSAE_SHARED_ROOT": url})
    assert reused.exit_code == 0, reused.output
    assert "reusing" in reused.stderr and reused.stdout.strip() == address
    assert not fresh.exists()  # nothing recomputed


def _forged_copy(tiny_cache_path, folder: Path, recompute_digests: bool) -> Path:
    import shutil

    from test_digests import forge

    copy = folder / ("forged-all" if recompute_digests else "forged-crc")
    shutil.copytree(tiny_cache_path, copy)
    forge(copy, recompute_digests=recompute_digests, whole_layer=True)  # layer 19 holds layer 5's rows
    return copy


@pytest.mark.parametrize("recompute_digests,caught_by", [(False, "fails verification"), (True, "fails the audit")])
def test_a_forged_shared_cache_is_not_reused(tiny_cache_path, url, tmp_path, recompute_digests, caught_by):
    """The issue's forgery (data replaced, crc32s recomputed, fingerprint kept) was published and silently reused."""
    forged = _forged_copy(tiny_cache_path, tmp_path, recompute_digests)
    published = cli("cache", "push", forged, "--shared-root", url, "--no-progress")
    assert published.exit_code == 0, published.output  # its crc32s match: push's own check passes it

    fresh = tmp_path / "fresh"
    refused = cli("harvest", *HARVEST_SMALL, "--out", fresh, "--shared-root", url)
    assert refused.exit_code == 1, refused.output
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and caught_by in last and "it was not reused" in last
    assert refused.stderr.count("error:") == 1 and not fresh.exists()

    trusted = cli("harvest", *HARVEST_SMALL, "--out", fresh, "--shared-root", url, "--no-check-shared")
    assert trusted.exit_code == 0 and "reusing" in trusted.stderr  # the documented way to skip the checks


def test_the_shared_root_is_write_once_per_fingerprint(tiny_cache_path, url, tmp_path):
    from mtsae.cache.shared import publish, shared_address

    first = cli("cache", "push", tiny_cache_path, "--shared-root", url, "--no-progress")
    assert first.exit_code == 0, first.output
    address = shared_address(url, read_attrs(tiny_cache_path)["fingerprint"])
    original = read_attrs(address)["digests"]["data"]

    forged = _forged_copy(tiny_cache_path, tmp_path, recompute_digests=True)
    over = cli("cache", "push", forged, "--shared-root", url, "--force", "--no-progress")
    assert over.exit_code == 1
    assert over.stderr.strip() == (f"error: the shared root already holds another cache at {address} (fingerprint "
                                   f"{read_attrs(forged)['fingerprint'][:12]}, other bytes); a shared root is write-once "
                                   "per fingerprint, so it is not replaced: use the cache there, or push yours elsewhere")
    with pytest.raises(MtsaeError, match="write-once per fingerprint"):
        publish(str(forged), url, log=lambda _line: None, progress=False)
    assert read_attrs(address)["digests"]["data"] == original  # untouched
    again = cli("cache", "push", tiny_cache_path, "--shared-root", url, "--no-progress")
    assert again.exit_code == 0 and "already holds this cache" in again.stderr


# --- configuration and one-line errors ------------------------------------------------------------------------
def test_storage_options_from_the_environment(pushed, s3_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MTSAE_STORAGE_OPTIONS", json.dumps({"endpoint_url": s3_endpoint}))
    _clear_filesystem_instances()
    try:
        assert cli("cache", "info", pushed).exit_code == 0
        monkeypatch.setenv("MTSAE_STORAGE_OPTIONS", "{not json")
        bad = cli("cache", "info", pushed)
        assert bad.exit_code == 1 and "MTSAE_STORAGE_OPTIONS must be a JSON object" in bad.stderr
    finally:
        _clear_filesystem_instances()


def test_without_s3fs_a_url_is_a_one_line_error(monkeypatch):
    import fsspec  # noqa: F401  (loads fsspec.registry)

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)  # forget the loaded backend
    for command in (["cache", "info", "s3://bucket/cache"], ["train", "--cache", "s3://bucket/cache", "--out", "x"]):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
        assert 'pip install "mtsae[remote]"' in result.stderr


def test_missing_remote_cache_and_bucket_are_one_line_errors(s3_endpoint):
    missing = cli("cache", "info", f"s3://{BUCKET}/nothing-here")
    assert missing.exit_code == 1 and "no mtsae cache at" in missing.stderr
    no_bucket = cli("cache", "verify", "s3://no-such-bucket-mtsae/x", "--no-progress")
    assert no_bucket.exit_code == 1 and len(no_bucket.stderr.strip().splitlines()) == 1
    unknown = cli("cache", "ls", "s4://bucket/caches")
    assert unknown.exit_code == 1 and "Protocol not known: s4" in unknown.stderr


# --- hostile remote caches (issue 12, points 1, 2 and 7) -------------------------------------------------------
def _one_error_line(result) -> str:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    return lines[-1]


def _escaped(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if "ESCAPED" in p.name]


@pytest.mark.parametrize("hostile", ["evil/../../ESCAPED", "evil/../ESCAPED", "absolute", "tokens/c/0/../../../ESCAPED",
                                     "activations/notes.txt"])
def test_pull_copies_only_the_format_s_names_and_writes_nothing_outside_dest(tiny_cache_path, url, tmp_path,
                                                                           monkeypatch, hostile):
    push(str(tiny_cache_path), url, log=lambda _line: None, progress=False)
    key = "/" + str(tmp_path / "ESCAPED-ABSOLUTE").lstrip("/") if hostile == "absolute" else hostile
    _fs().pipe_file(_key(url, key), b"planted by a hostile teammate")
    assert key in remote.list_objects(url)  # the listing really hands mtsae this key

    dest = tmp_path / "pulls" / "dest"
    error = _one_error_line(cli("cache", "pull", url, dest, "--no-progress"))
    assert repr(key) in error and "not part of the cache format" in error
    assert _escaped(tmp_path) == [] and read_attrs(dest) is None  # nothing copied at all

    monkeypatch.setenv("MTSAE_REMOTE_CACHE_DIR", str(tmp_path / "pulls" / "read-through"))
    error = _one_error_line(cli("train", "--cache", url, "--out", tmp_path / "run", *TRAIN_SMALL))
    assert repr(key) in error and _escaped(tmp_path) == []


@pytest.mark.parametrize("name", ["../victim", "absolute"])
@pytest.mark.parametrize("table", ["arrays", "chunks"])
def test_a_manifest_naming_other_arrays_deletes_nothing(tiny_cache_path, url, tmp_path, name, table):
    push(str(tiny_cache_path), url, log=lambda _line: None, progress=False)
    victim = tmp_path / "victim"
    (victim / "c").mkdir(parents=True)
    (victim / "c" / "precious").write_text("someone's data")
    name = str(victim) if name == "absolute" else name
    attrs_doc = json.loads(_fs().cat_file(_key(url, "zarr.json")))
    checksums = attrs_doc["attributes"]["mtsae"]["checksums"]
    checksums[table][name] = 0 if table == "arrays" else checksums["chunks"]["tokens"]
    _fs().pipe_file(_key(url, "zarr.json"), json.dumps(attrs_doc).encode())

    error = _one_error_line(cli("cache", "pull", url, tmp_path / "dest", "--no-progress"))
    assert f"checksums.{table} names '{name[:40]}" in error and "not an array of this cache" in error
    assert (victim / "c" / "precious").read_text() == "someone's data"


@pytest.mark.parametrize("field,value,phrase", [
    ("layers", ["5"], "invalid manifest: manifest field 'layers'"), ("d_model", "64", "field 'd_model'"),
    ("fingerprint", "../../../../x" + "0" * 52, "field 'fingerprint'"), ("dtype", "float64", "field 'dtype'"),
    ("counts", {"tokens": -1, "sequences": 0, "documents": 0}, "field 'counts'"),
    ("checksums", {"algorithm": "crc32", "chunks": {}, "arrays": {}}, "checksums.chunks has no entry for"),
    ("checksums", {}, "records no checksums"),
    ("fingerprint", "0" * 64, "inconsistent manifest: manifest fingerprint 000000000000 is not the sha256 of its content"),
])
def test_every_manifest_field_is_schema_checked_before_a_pull(pushed, tmp_path, url, field, value, phrase):
    fs = _fs()
    for key in fs.find(pushed):
        fs.pipe_file(f"{url.removeprefix('s3://')}/{key[len(pushed.removeprefix('s3://')) + 1:]}", fs.cat_file(key))
    doc = json.loads(fs.cat_file(_key(url, "zarr.json")))
    doc["attributes"]["mtsae"][field] = value
    fs.pipe_file(_key(url, "zarr.json"), json.dumps(doc).encode())
    error = _one_error_line(cli("cache", "pull", url, tmp_path / "dest", "--no-progress"))
    assert phrase in error
    assert not (tmp_path / "dest").exists() or read_attrs(tmp_path / "dest") is None


def test_push_leaves_zarr_temporaries_and_strays_behind(tiny_cache_path, url, tmp_path):
    import shutil

    local = tmp_path / "c.zarr"
    shutil.copytree(tiny_cache_path, local)
    temporary = "tokens/c/0.0123456789abcdef0123456789abcdef.partial"
    (local / temporary).write_bytes(b"half a chunk")
    (local / "notes.txt").write_text("mine, not the cache's")
    result = cli("cache", "push", local, url, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "not copied: 2 file(s)" in result.stderr
    uploaded = remote.list_objects(url)
    assert temporary not in uploaded and "notes.txt" not in uploaded
    assert verify_cache(url) == []
