"""The one atomic writer behind checkpoints, id files and plots: all or nothing, and no temp file left."""

import errno
import os

import numpy as np
import pytest

from charrnn.files import atomic, corpus
from charrnn.work import report
from charrnn.errors import CorpusError


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def writer(data: bytes):
    return lambda f: f.write(data)


def test_writes_every_file_and_leaves_no_temp(tmp_path):
    atomic.write_files([(tmp_path / "a", writer(b"one")), (str(tmp_path / "b"), writer(b"two" * 100_000))])
    assert (tmp_path / "a").read_bytes() == b"one" and (tmp_path / "b").read_bytes() == b"two" * 100_000
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_full_disk_in_the_second_file_changes_neither(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"old a")
    (tmp_path / "b").write_bytes(b"old b")
    real_write = os.write
    calls = []

    def fill_up(fd, data):
        calls.append(len(data))
        if len(calls) > 2:  # the first file, then half of the second get through
            enospc()
        return real_write(fd, memoryview(data)[: max(1, len(data) // 2)] if len(calls) == 2 else data)

    monkeypatch.setattr(os, "write", fill_up)
    with pytest.raises(OSError) as info:
        atomic.write_files([(tmp_path / "a", writer(b"new a")), (tmp_path / "b", writer(b"new b"))])
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == b"old a" and (tmp_path / "b").read_bytes() == b"old b"
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_failing_write_function_passes_through_and_changes_nothing(tmp_path):
    (tmp_path / "a").write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise ValueError("the caller's own problem")

    with pytest.raises(ValueError, match="the caller's own problem"):
        atomic.write_files([(tmp_path / "b", writer(b"fine")), (tmp_path / "a", broken)])
    assert sorted(os.listdir(tmp_path)) == ["a"] and (tmp_path / "a").read_bytes() == b"old"


def test_a_failed_rename_keeps_earlier_targets_new_and_later_ones_old(tmp_path, monkeypatch):
    for name in "abc":
        (tmp_path / name).write_bytes(b"old")
    real_replace = os.replace

    def second_fails(src, dst):
        if os.fspath(dst).endswith("b"):
            enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError) as info:
        atomic.write_files([(tmp_path / name, writer(b"new")) for name in "abc"])
    monkeypatch.undo()
    assert info.value.filename == str(tmp_path / "b")
    assert [(tmp_path / name).read_bytes() for name in "abc"] == [b"new", b"old", b"old"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]


def test_cleanup_removes_only_hidden_temp_files(tmp_path):
    (tmp_path / ".x.npy.0a1b.tmp").write_bytes(b"")
    (tmp_path / "x.tmp").write_bytes(b"")
    assert atomic.cleanup_temp_files(tmp_path) == [".x.npy.0a1b.tmp"]
    assert os.listdir(tmp_path) == ["x.tmp"]


def test_id_files_go_through_it(tmp_path, monkeypatch):
    path = tmp_path / "ids.npy"
    corpus.save_ids(path, np.arange(10, dtype=np.uint16))
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(CorpusError, match="cannot write token ids: No space left"):
        corpus.save_ids(path, np.arange(20, dtype=np.uint16))
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ids.npy"]
    assert np.array_equal(np.load(path), np.arange(10))


def test_plots_go_through_it(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    records = [{"step": s, "loss": 3.0 / s, "val_loss": 3.5 / s} for s in range(1, 6)]
    path = tmp_path / "loss.png"
    report.plot_losses(records, str(path), title="run")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(OSError) as info:
        report.plot_losses(records[:2], str(path))
    monkeypatch.undo()
    assert info.value.filename == str(path) and info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["loss.png"]
