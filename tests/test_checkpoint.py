"""Checkpoints: exact round trips, atomic writes, and refusal of every kind of bad file
(truncated, corrupted, forged, foreign formats) with a CheckpointError."""

import errno
import json
import os
import struct
import tempfile

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charrnn
from charrnn.files import checkpoint
from charrnn.files.checkpoint import FORMAT_VERSION, CheckpointError
from charrnn.core.model import ModelConfig, param_shapes

EXTRA = {"tokens": ["a", "b", "\n", "é", "\udc80"], "special": {"eos": 0, "unk": 1}, "data": {"file": "x.txt"}}


def tiny_config(dtype="float32", **kw):
    return ModelConfig(**{"vocab_size": 5, "cell": "rnn", "layers": 1, "hidden": 3, "embed": 2, "dtype": dtype, **kw})


def tiny_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(config.dtype) for k, s in param_shapes(config).items()}


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    """A small valid model checkpoint, as bytes."""
    path = tmp_path_factory.mktemp("valid") / "model.safetensors"
    config = tiny_config()
    checkpoint.save_model(path, tiny_params(config), config, EXTRA)
    return path.read_bytes()


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def raw_safetensors(tensors, header_meta):
    """A safetensors file built with the safetensors library itself (a 'foreign' writer)."""
    return safetensors.numpy.save(tensors, metadata=header_meta)


def charrnn_meta(**meta):
    return {"charrnn": json.dumps({"format_version": FORMAT_VERSION, **meta})}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell,layers", [("lstm", 2), ("gru", 1)])
def test_model_round_trip_bit_identical(tmp_path, dtype, cell, layers):
    config = tiny_config(dtype, cell=cell, layers=layers, forget_bias=1.0 if cell == "lstm" else None)
    params = tiny_params(config)
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, params, config, EXTRA)

    loaded, config2, meta = checkpoint.load_model(path)
    assert config2 == config
    assert loaded.keys() == params.keys()
    for k in params:
        assert loaded[k].dtype == params[k].dtype and loaded[k].shape == params[k].shape
        assert loaded[k].tobytes() == params[k].tobytes(), k
        assert loaded[k].flags.writeable
    for k, v in EXTRA.items():
        assert meta[k] == v
    assert meta["kind"] == "model" and meta["format_version"] == FORMAT_VERSION
    assert meta["charrnn_version"] == charrnn.__version__

    # A run directory works too.
    assert checkpoint.load_model(tmp_path)[1] == config

    # Plain safetensors reads it, with our metadata in __metadata__["charrnn"].
    plain = safetensors.numpy.load_file(str(path))
    for k in params:
        assert np.array_equal(plain[k], params[k])
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["charrnn"])["model"] == config.to_dict()


def test_state_round_trip(tmp_path):
    arrays = {
        "t": np.array(7, dtype=np.int64),
        "m/head.bias": np.linspace(-1, 1, 5, dtype=np.float32),
        "v/head.bias": np.linspace(0, 1, 5),
        "empty": np.zeros((0, 3), np.float32),
        "tokens": np.array([3, 1, 4], dtype=np.uint8),
        "strided": np.arange(12.0).reshape(3, 4).T,
    }
    meta = {"rng": {"state": 2**127 + 5, "inc": 3}, "position": 12}
    checkpoint.save_state(tmp_path / "state.safetensors", arrays, meta)
    loaded, meta2 = checkpoint.load_state(tmp_path)
    assert loaded.keys() == arrays.keys()
    for k, v in arrays.items():
        assert loaded[k].shape == v.shape and loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v), k
    assert meta2["rng"] == meta["rng"] and meta2["position"] == 12 and meta2["kind"] == "state"
    # Kinds are not interchangeable.
    with pytest.raises(CheckpointError, match="not a charrnn model"):
        checkpoint.load_model(tmp_path / "state.safetensors")


def test_state_file_is_not_a_model_and_vice_versa(tmp_path, valid_bytes):
    write(tmp_path / "m.safetensors", valid_bytes)
    with pytest.raises(CheckpointError, match="not a charrnn state"):
        checkpoint.load_state(tmp_path / "m.safetensors")


def test_optimizer_state_through_a_file_resumes_exactly(tmp_path):
    from charrnn.core import optim

    config = tiny_config("float32")
    params = tiny_params(config)
    rng = np.random.default_rng(3)
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(6)]
    opt = optim.Adam(params)
    for g in grads[:3]:
        opt.step(params, g, 1e-2)
    checkpoint.save_model(tmp_path / "model.safetensors", params, config, {})
    checkpoint.save_state(tmp_path / "state.safetensors", opt.state_arrays(), {"optimizer": opt.name})
    params2, _, _ = checkpoint.load_model(tmp_path)
    opt2 = optim.Adam(params2)
    opt2.load_state_arrays(checkpoint.load_state(tmp_path)[0])
    for g in grads[3:]:
        opt.step(params, g, 1e-2)
        opt2.step(params2, g, 1e-2)
    for k in params:
        assert params[k].tobytes() == params2[k].tobytes()


# ---------------------------------------------------------------- writing safely


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.save_tensors(tmp_path / "a", {"x": np.zeros(2)}, {})
        os.umask(0o077)
        checkpoint.save_tensors(tmp_path / "b", {"x": np.zeros(2)}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["replace", "write", "fsync"])
def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch, target):
    path = tmp_path / "model.safetensors"
    config = tiny_config()
    checkpoint.save_model(path, tiny_params(config), config, EXTRA)
    before = path.read_bytes()

    if target == "write":
        real_write = os.write
        calls = []

        def fail_later(fd, data):
            calls.append(1)
            if len(calls) > 1:  # the first half gets through, then the disk is full
                enospc()
            return real_write(fd, memoryview(data)[: len(data) // 2])

        monkeypatch.setattr(os, "write", fail_later)
    elif target == "replace":
        def fail_replace(src, dst):
            # The temp file sits beside the target, hidden, with the .tmp suffix.
            name = os.path.basename(src)
            assert os.path.dirname(src) == str(tmp_path) and name.startswith(".") and name.endswith(".tmp")
            enospc()

        monkeypatch.setattr(os, "replace", fail_replace)
    else:
        monkeypatch.setattr(os, target, enospc)

    with pytest.raises(CheckpointError) as info:
        checkpoint.save_model(path, tiny_params(config, seed=1), config, EXTRA)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "No space left" in message
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_unwritable_destination(tmp_path):
    with pytest.raises(CheckpointError, match="No such file"):
        checkpoint.save_tensors(tmp_path / "missing-dir" / "x", {"x": np.zeros(1)}, {})
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError):
        checkpoint.save_tensors(tmp_path / "d", {"x": np.zeros(1)}, {})
    assert sorted(os.listdir(tmp_path)) == ["d"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_refuses_to_save_non_finite(tmp_path, bad):
    config = tiny_config()
    params = tiny_params(config)
    params["head.weight"][1, 2] = bad
    with pytest.raises(CheckpointError, match="head.weight"):
        checkpoint.save_model(tmp_path / "m", params, config, {})
    assert os.listdir(tmp_path) == []


def test_save_rejects_bad_input(tmp_path):
    config = tiny_config()
    params = tiny_params(config)
    with pytest.raises(CheckpointError, match="not JSON"):
        checkpoint.save_tensors(tmp_path / "x", {"x": np.zeros(1)}, {"bad": object()})
    with pytest.raises(CheckpointError, match="not JSON"):
        checkpoint.save_tensors(tmp_path / "x", {"x": np.zeros(1)}, {"bad": float("nan")})
    with pytest.raises(CheckpointError, match="dtype"):
        checkpoint.save_tensors(tmp_path / "x", {"x": np.zeros(1, complex)}, {})
    for name in ("", "__metadata__", "a\udc80", 3):
        with pytest.raises(CheckpointError, match="cannot save tensor named"):
            checkpoint.save_tensors(tmp_path / "x", {name: np.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="reserved"):
        checkpoint.save_model(tmp_path / "x", params, config, {"kind": "state"})
    del params["head.bias"]
    with pytest.raises(CheckpointError, match="missing tensors head.bias"):
        checkpoint.save_model(tmp_path / "x", params, config, {})
    assert os.listdir(tmp_path) == []


def test_cleanup_temp_files(tmp_path):
    (tmp_path / ".model.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".state.safetensors.ff.tmp").write_bytes(b"")
    (tmp_path / "model.safetensors").write_bytes(b"keep")
    (tmp_path / "notes.tmp").write_bytes(b"keep")
    (tmp_path / ".dir.tmp").mkdir()
    removed = checkpoint.cleanup_temp_files(tmp_path)
    assert removed == [".model.safetensors.abc123.tmp", ".state.safetensors.ff.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".dir.tmp", "model.safetensors", "notes.tmp"]
    assert checkpoint.cleanup_temp_files(tmp_path / "nope") == []


# ---------------------------------------------------------------- refusing bad files


def test_missing_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load_tensors(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="directory"):
        checkpoint.load_tensors(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load_model(tmp_path)  # a run directory without model.safetensors
    with pytest.raises(CheckpointError, match="empty"):
        checkpoint.load_tensors(write(tmp_path / "e", b""))
    with pytest.raises(CheckpointError, match="header too small"):
        checkpoint.load_tensors(write(tmp_path / "s", b"\x02\x00\x00"))


def test_truncation_at_every_offset(tmp_path, valid_bytes):
    path = tmp_path / "m"
    for n in range(len(valid_bytes)):
        write(path, valid_bytes[:n])
        with pytest.raises(CheckpointError):
            checkpoint.load_model(path)


def test_trailing_garbage(tmp_path, valid_bytes):
    with pytest.raises(CheckpointError, match="not fully covered"):
        checkpoint.load_model(write(tmp_path / "m", valid_bytes + b"\x00" * 4))


def test_header_bit_flips_never_give_wrong_weights(tmp_path, valid_bytes):
    """Every single-bit flip in the length prefix and header: an error, or the very same weights."""
    original, _, _ = checkpoint.load_model(write(tmp_path / "ok", valid_bytes))
    header_end = 8 + struct.unpack("<Q", valid_bytes[:8])[0]
    path = tmp_path / "m"
    errors = 0
    for i in range(header_end):
        for bit in range(8):
            data = bytearray(valid_bytes)
            data[i] ^= 1 << bit
            write(path, bytes(data))
            try:
                params, _, _ = checkpoint.load_model(path)
            except CheckpointError:
                errors += 1
                continue
            assert params.keys() == original.keys()
            for k in params:
                assert params[k].tobytes() == original[k].tobytes()
    assert errors > header_end * 4  # most flips break something


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 2**31, 100_000_001, 10**6, 99_999_999])
def test_header_length_bombs(tmp_path, valid_bytes, length):
    data = struct.pack("<Q", length) + valid_bytes[8:]
    message = "header too large" if length > 100_000_000 else "invalid header length"
    with pytest.raises(CheckpointError, match=f"not a valid safetensors file: {message}"):
        checkpoint.load_tensors(write(tmp_path / "m", data))


def test_header_over_100mb_refused_even_when_file_is_big(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100_000_001) + b"{")
        f.truncate(8 + 100_000_001 + 16)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match="header too large"):
        checkpoint.load_tensors(path)
    with pytest.raises(CheckpointError, match="limit"):
        checkpoint.load_tensors(path, max_bytes=1000)


# Pickle bytes, written out by hand (the package never imports pickle):
# protocol 4 and protocol 2 dumps of {"w": [1.0, 2.0]} / {"w": [1.0]}.
PICKLE_4 = (
    b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01w\x94]\x94(G?\xf0\x00\x00"
    b"\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00es."
)
PICKLE_2 = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01]q\x02G?\xf0\x00\x00\x00\x00\x00\x00as."


@pytest.mark.parametrize("data", [PICKLE_4, PICKLE_2, b"PK\x03\x04" + bytes(60), b"\x00" * 64, b"hello world, not a checkpoint"])
def test_foreign_bytes_refused(tmp_path, data):
    with pytest.raises(CheckpointError):
        checkpoint.load_model(write(tmp_path / "m", data))


@pytest.mark.parametrize("zipfile", [True, False])
def test_torch_save_file_refused(tmp_path, zipfile):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"head.bias": torch.zeros(5)}, path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError):
        checkpoint.load_model(path)


def test_header_json_problems(tmp_path):
    def file_with_header(header: bytes, data=b""):
        return write(tmp_path / "m", struct.pack("<Q", len(header)) + header + data)

    cases = {
        b"not json": "invalid JSON in header",
        b"[1, 2]": "invalid JSON in header",
        b'{"a": 1': "invalid JSON in header",
        b"{\xff}": "invalid UTF-8 in header",
        b'{"__metadata__": {"charrnn": "{}"}, "__metadata__": {}}': "duplicate",
        b"{}": "no charrnn metadata",
        b'{"__metadata__": {"charrnn": "[1]"}}': "not a JSON object",
        b'{"__metadata__": {"charrnn": "{"}}': "not valid JSON",
        b'{"__metadata__": {"charrnn": "{}"}}': "format_version",
        b'{"__metadata__": {"charrnn": "{\\"format_version\\": true}"}}': "format_version",
        b'{"__metadata__": {"charrnn": 5}}': "expected a string",
        b'{"__metadata__": {"charrnn": "{\\"format_version\\": 1}", "other": 5}}': "expected a string",
    }
    for header, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            checkpoint.load_tensors(file_with_header(header))

    def entry(**info):
        meta = json.dumps(charrnn_meta()).encode()
        base = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
        base.update(info)
        return b'{"__metadata__": ' + meta + b', "x": ' + json.dumps(base).encode() + b"}"

    # The library's words for what it refuses, then ours for the valid safetensors we do not take.
    mismatch = "invalid shape, data type, or offset"
    bad_entries = [
        (entry(dtype="F8_E4M3"), mismatch),
        (entry(dtype="BF16"), mismatch),
        (entry(dtype=3), "invalid type"),
        (entry(dtype="F33"), "unknown variant"),
        (entry(shape=[-2]), "expected usize"),
        (entry(shape=[2.0]), "expected usize"),
        (entry(shape=[True, 2]), "expected usize"),
        (entry(shape="2"), "expected a sequence"),
        (entry(shape=[3]), mismatch),
        (entry(shape=[2**40, 2**40]), "overflow"),
        (entry(data_offsets=[0, 16]), mismatch),
        (entry(data_offsets=[-8, 0]), "expected usize"),
        (entry(data_offsets=[0]), "invalid length"),
        (entry(data_offsets=[0, 8.0]), "expected usize"),
        (entry(dtype="BF16", shape=[4]), "tensor 'x': unsupported dtype BF16"),
        (entry(dtype="F8_E4M3", shape=[8]), "tensor 'x': unsupported dtype F8_E4M3"),
        (entry(dtype="BOOL", shape=[8]), "tensor 'x': unsupported dtype BOOL"),
        (entry(dtype="C64", shape=[1]), "tensor 'x': unsupported dtype C64"),
    ]
    for header, message in bad_entries:
        with pytest.raises(CheckpointError, match=message):
            checkpoint.load_tensors(file_with_header(header, bytes(8)))


def test_overlapping_and_gapped_tensors(tmp_path):
    meta = json.dumps(charrnn_meta())

    def file_with(entries, nbytes):
        header = {"__metadata__": json.loads(meta)}
        for name, offsets in entries.items():
            header[name] = {"dtype": "F32", "shape": [(offsets[1] - offsets[0]) // 4], "data_offsets": offsets}
        raw = json.dumps(header).encode()
        return write(tmp_path / "m", struct.pack("<Q", len(raw)) + raw + bytes(nbytes))

    with pytest.raises(CheckpointError, match="invalid offset for tensor `b`"):  # overlap
        checkpoint.load_tensors(file_with({"a": [0, 8], "b": [4, 12]}, 12))
    with pytest.raises(CheckpointError, match="invalid offset for tensor `[ab]`"):  # the same bytes twice
        checkpoint.load_tensors(file_with({"a": [0, 8], "b": [0, 8]}, 8))
    with pytest.raises(CheckpointError, match="invalid offset for tensor `b`"):  # a gap
        checkpoint.load_tensors(file_with({"a": [0, 4], "b": [8, 12]}, 12))
    with pytest.raises(CheckpointError, match="invalid offset for tensor `a`"):  # a gap at the start
        checkpoint.load_tensors(file_with({"a": [4, 8]}, 8))
    with pytest.raises(CheckpointError, match="not fully covered"):
        checkpoint.load_tensors(file_with({"a": [0, 4]}, 8))
    tensors, _ = checkpoint.load_tensors(file_with({"b": [4, 8], "a": [0, 4]}, 8))  # order in JSON is free
    assert tensors["a"].shape == (1,)


def test_a_repeated_tensor_name_is_refused(tmp_path):
    """The library keeps a repeated name's last entry; the first entry's bytes then cover no tensor."""
    meta = json.dumps(charrnn_meta())
    raw = ('{"__metadata__": %s, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
           '"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}' % meta).encode()
    data = struct.pack("<Q", len(raw)) + raw + struct.pack("<2f", 1.0, 2.0)
    with pytest.raises(CheckpointError, match="invalid offset for tensor `a`"):
        checkpoint.load_tensors(write(tmp_path / "m", data))


def test_newer_format_refused(tmp_path):
    data = raw_safetensors({"x": np.zeros(2, np.float32)}, {"charrnn": json.dumps({"format_version": FORMAT_VERSION + 1})})
    with pytest.raises(CheckpointError, match=f"newer charrnn \\(format {FORMAT_VERSION + 1}\\); upgrade charrnn"):
        checkpoint.load_tensors(write(tmp_path / "m", data))


def test_plain_safetensors_without_metadata_refused(tmp_path):
    data = raw_safetensors({"x": np.zeros(2, np.float32)}, None)
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint"):
        checkpoint.load_tensors(write(tmp_path / "m", data))


def test_nan_weights_in_file_refused(tmp_path):
    config = tiny_config()
    params = tiny_params(config)
    params["rnn.weight_hh_l0"][0, 0] = np.nan
    meta = charrnn_meta(kind="model", model=config.to_dict())
    with pytest.raises(CheckpointError, match="rnn.weight_hh_l0.*NaN"):
        checkpoint.load_model(write(tmp_path / "m", raw_safetensors(params, meta)))


def test_model_tensors_must_match_config(tmp_path):
    config = tiny_config()
    meta = charrnn_meta(kind="model", model=config.to_dict())

    def load(params):
        return checkpoint.load_model(write(tmp_path / "m", raw_safetensors(params, meta)))

    params = tiny_params(config)
    load(params)  # the foreign writer's file is fine as it is

    wrong_shape = dict(params, **{"head.weight": np.zeros((5, 4), np.float32)})
    with pytest.raises(CheckpointError, match=r"head.weight has shape \(5, 4\).*\(5, 3\)"):
        load(wrong_shape)
    wrong_dtype = dict(params, **{"head.bias": np.zeros(5, np.float64)})
    with pytest.raises(CheckpointError, match="head.bias is float64"):
        load(wrong_dtype)
    missing = {k: v for k, v in params.items() if k != "rnn.bias_hh_l0"}
    with pytest.raises(CheckpointError, match="missing tensors rnn.bias_hh_l0"):
        load(missing)
    extra = dict(params, **{"rnn.weight_ih_l1": np.zeros((3, 3), np.float32)})
    with pytest.raises(CheckpointError, match="unexpected tensors rnn.weight_ih_l1"):
        load(extra)


@pytest.mark.parametrize(
    "model",
    [None, "lstm", {"vocab_size": 5, "cell": "transformer"}, {"vocab_size": 5, "hidden": "3"},
     {"vocab_size": 5, "bogus": 1}, {"cell": "rnn"}, {"vocab_size": 5, "dropout": "x"}],
)
def test_bad_model_config_refused(tmp_path, model):
    meta = charrnn_meta(kind="model", model=model)
    with pytest.raises(CheckpointError, match="bad model config"):
        checkpoint.load_model(write(tmp_path / "m", raw_safetensors({"x": np.zeros(1, np.float32)}, meta)))


def test_errors_are_one_line(tmp_path, valid_bytes):
    bad = valid_bytes[:8] + b"{\n\n" + valid_bytes[11:]
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_model(write(tmp_path / "m", bad))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m")
        with open(path, "wb") as f:
            f.write(data)
        return checkpoint.load_model(path)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    with pytest.raises(CheckpointError):
        load_bytes(data)


MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "set"]), st.integers(0, 10**6), st.integers(0, 255))


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_checkpoints(valid_bytes, mutations):
    data = bytearray(valid_bytes)
    for op, pos, value in mutations:
        i = pos % (len(data) + (op == "insert"))
        if op == "flip":
            data[i] ^= 1 << (value % 8)
        elif op == "set":
            data[i] = value
        elif op == "insert":
            data.insert(i, value)
        elif len(data) > 1:
            del data[i]
    try:
        params, config, _ = load_bytes(bytes(data))
    except CheckpointError:
        return
    # Whatever loads is a consistent, finite model.
    for name, shape in param_shapes(config).items():
        assert params[name].shape == shape and params[name].dtype == np.dtype(config.dtype)
        assert np.isfinite(params[name]).all()


def _declare_extra(path, out, name, shape, extra_bytes):
    """A copy of the safetensors file at path whose header declares one more tensor `name` of `shape`,
    its bytes a hole at the end of a sparse file (a few KB on disk, whatever the header says)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(data), len(data) + extra_bytes]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
        f.truncate(8 + len(text) + len(data) + extra_bytes)
    return out


@pytest.mark.parametrize("kind", ["model", "state"])
def test_a_huge_tensor_declared_in_the_header_is_refused_before_it_is_read(tmp_path, kind):
    import tracemalloc

    config = tiny_config()
    params = tiny_params(config)
    if kind == "model":
        checkpoint.save_model(tmp_path / "f", params, config, EXTRA)
        load, message = checkpoint.load_model, "unexpected tensors zz_extra"
    else:
        checkpoint.save_state(tmp_path / "f", {f"param/{k}": v for k, v in params.items()},
                              {"model": config.to_dict(), "train": {"batch_size": 2}})
        load, message = checkpoint.load_state, "tensor 'zz_extra' of shape (64, 1048576) is larger"
    size = 256 << 20  # 256 MB of zeros the file does not hold
    bomb = _declare_extra(tmp_path / "f", tmp_path / "bomb", "zz_extra", (64, 1 << 20), size)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            load(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(info.value)
    assert peak < 4 << 20  # the header and the small tensors; reading the declared one allocated 256 MB
