"""The hostile-input sweep of issue 29, kept as generators: crafted model files, state files, logs,
corpora and run directories, fed to every command in-process (tiny_runs.invoke, through cli.main) and to
the Python API.

Each property fails on any of:
- a traceback: an exception other than the library's own reaching the command line, or an exit
  that is not a clean `Error: ...` line (`outcome`);
- a write outside the run's own regular files: a victim file a symlink in the run points to, or any
  file beside the run (`Snapshot` of the example's whole tree, symlinks not followed);
- a run directory left neither resumable nor restartable (`resumable_or_restartable`);
- memory above a stated bound (tracemalloc's peak in-process; a child's peak RSS where the memory
  is taken by native code or the input is endless).

Tiny runs are trained once per module (`runs`); every example copies one into a fresh folder and
damages the copy. The cases issue 29 lists that still fail are marked xfail(strict=True) with the
case named: a fix turns its test red until the mark is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import charrnn
from charrnn.work import annotate as annotate_mod
from charrnn.files import checkpoint, layout
from charrnn.errors import CharRNNError
from tiny_runs import NAMES, REFERENCE, TINY, invoke, stream_text

SWEEP = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
ISSUE = "issue 29: "

# ---------------------------------------------------------------- what every property checks


class Traceback(AssertionError):
    pass


def outcome(args, allowed=(0, 1, 2)):
    """Run `charrnn ARGS` in-process; fail on a traceback or an unclean error exit. Returns tiny_runs.Invoked."""
    try:
        result = invoke(args)
    except BaseException as exc:  # noqa: BLE001 - what reaches cli.main's caller is a traceback
        if isinstance(exc, (KeyboardInterrupt,)) and not isinstance(exc, Exception):
            raise
        raise Traceback(f"charrnn {' '.join(map(str, args))}: {type(exc).__name__}: {exc}\n"
                        + "".join(traceback.format_exception(exc))[-3000:]) from None
    code, out, err = result
    assert "Traceback" not in err and "Exception ignored" not in err, (args, err[-2000:])
    assert code in allowed, (args, code, err[-2000:])
    if code:
        lines = err.rstrip("\n").split("\n")
        assert lines[-1].startswith("Error: "), (args, code, err[-2000:])
        # one line: whatever follows "Error: " is the message, and nothing printed after it
        assert sum(line.startswith("Error: ") for line in lines) == 1, (args, err[-2000:])
    return result


def assert_clean_error(result, *fragments):
    code, out, err = result
    assert code == 1, (code, err)
    assert err.rstrip("\n").split("\n")[-1].startswith("Error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


class Snapshot:
    """Every entry under a folder (symlinks not followed): kind, bytes and mode; compare two with ==."""

    def __init__(self, root, skip=()):
        self.root, self.entries = os.fspath(root), {}
        skip = {os.path.normpath(os.path.join(self.root, s)) for s in skip}
        for folder, dirs, files in os.walk(self.root):
            for name in sorted(dirs + files):
                path = os.path.join(folder, name)
                if path in skip:
                    continue
                rel = os.path.relpath(path, self.root)
                st_ = os.lstat(path)
                if os.path.islink(path):
                    self.entries[rel] = ("link", os.readlink(path))
                elif os.path.isdir(path):
                    self.entries[rel] = ("dir", st_.st_mode)
                else:
                    with open(path, "rb") as f:
                        self.entries[rel] = ("file", st_.st_mode, hashlib.sha256(f.read()).hexdigest())
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]

    def __eq__(self, other):
        return self.entries == other.entries

    def diff(self, other) -> list[str]:
        keys = sorted(set(self.entries) | set(other.entries))
        return [k for k in keys if self.entries.get(k) != other.entries.get(k)]


def resumable_or_restartable(run_dir, corpus) -> str:
    """'resumed' or 'restarted' when `train --resume RUN` or `train CORPUS --out RUN` works; fails otherwise."""
    first = outcome(["train", "--resume", run_dir, "--max-steps", 6, "-q"])
    if first.exit_code == 0:
        return "resumed"
    second = outcome(["train", corpus, *TINY, "--max-steps", 2, "--eval-every", 2, "--out", run_dir, "-q"])
    assert second.exit_code == 0, (f"{run_dir} can be neither resumed ({first.stderr.strip()}) nor restarted "
                                   f"({second.stderr.strip()})")
    return "restarted"


# ---------------------------------------------------------------- the runs every example starts from

CLF_LINES = ([f"code\t{x}" for x in ("def f(x): return x", "import os, sys", "x = [a for a in b]", "pass")]
             + [f"prose\t{x}" for x in ("The cat sat.", "A dog ran.", "She said so.", "We went home.")])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs (4 steps, a checkpoint at 2 and 4): 'a' and 'b' (stream mode, b with a larger
    vocabulary), 'lines' (lines mode), 'clf' (a classifier); with their corpora beside them."""
    root = tmp_path_factory.mktemp("runs")
    (root / "a.txt").write_text(stream_text(200), encoding="utf-8")
    (root / "b.txt").write_text(stream_text(200, seed=1).upper() + "0123456789 ,;:!?\n" * 20, encoding="utf-8")
    (root / "lines.txt").write_text("\n".join(NAMES * 3) + "\n", encoding="utf-8")
    (root / "clf.tsv").write_text("\n".join(CLF_LINES * 4) + "\n", encoding="utf-8")
    for name, corpus, extra in (("a", "a.txt", []), ("b", "b.txt", []), ("lines", "lines.txt", ["--mode", "lines"]),
                                ("clf", "clf.tsv", ["--task", "classify"])):
        result = invoke(["train", root / corpus, *TINY, *extra, "--max-steps", 4, "--eval-every", 2,
                         "--out", root / name, "-q"])
        assert result.exit_code == 0, result.stderr
    (root / "text.txt").write_text(stream_text(40, seed=3), encoding="utf-8")
    return root


@pytest.fixture
def place():
    """A fresh folder for one example (Hypothesis runs many examples in one test call)."""
    made = []

    def make():
        made.append(tempfile.mkdtemp(prefix="hostile-"))
        return made[-1]
    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def copy_run(runs, name, where, as_name="run"):
    target = os.path.join(where, as_name)
    shutil.copytree(runs / name, target, symlinks=True)
    return target


# ---------------------------------------------------------------- hostile values

CONTROL = ["\x1b[31m", "\x07", "\u202e", "\x00", "\x1b]0;title\x07", "\r", "\x08"]
SURROGATES = ["\ud800", "\udfff", "a\udc80b"]
HOSTILE_TEXT = st.sampled_from(CONTROL + SURROGATES + ["", " ", "\n", "x" * 10_000, "<script>", "\ufffd"]) | st.text(
    max_size=8)
HUGE = st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 10**21, 1e308, -1e308, 5e-324,
                        float("inf"), float("-inf"), float("nan"), 3.5e38, -3.5e38])
SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers() | HUGE | st.floats() | HOSTILE_TEXT
           | st.sampled_from(["lstm", "adam", "cosine", "lines", "float64", "word", "classify", "kept"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(HOSTILE_TEXT | st.text(max_size=3), inner, max_size=3), max_leaves=6)
DEEP = "[" * 100_000 + "]" * 100_000


def json_paths(value, prefix=()):
    """Every path (tuple of keys and indices) inside a JSON value, the value itself included."""
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from json_paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for i, inner in enumerate(value[:4]):  # a vocabulary has hundreds of entries: the first few stand for all
            yield from json_paths(inner, prefix + (i,))


def edit_json(value, path, action, new=None):
    """value with the entry at path replaced by new ('set') or removed ('del'); path () replaces the whole."""
    if not path:
        return new
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if action == "del":
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return value


# ---------------------------------------------------------------- writing crafted safetensors files


def read_file(path):
    """(arrays, charrnn metadata) of a valid file, the reserved metadata fields included."""
    return checkpoint.load_tensors(path)


def write_raw(path, arrays: dict, meta, *, meta_text: str | None = None) -> None:
    """A safetensors file holding arrays and charrnn's metadata as given, whatever it says (no checks)."""
    text = meta_text if meta_text is not None else json.dumps(meta, ensure_ascii=True)
    data = safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                  metadata={"charrnn": text})
    with open(path, "wb") as f:
        f.write(data)


def header_bomb(path, source, extra_bytes: int) -> None:
    """source's file with one more tensor declared in its header, extra_bytes long (the file sparse)."""
    with open(source, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    header["zz_extra"] = {"dtype": "U8", "shape": [extra_bytes], "data_offsets": [len(body), len(body) + extra_bytes]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)
        f.truncate(8 + len(text) + len(body) + extra_bytes)


def tensor_offsets(data: bytes, name: str) -> tuple[int, int]:
    """Where a tensor's bytes lie in a safetensors file's bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


# A byte-level damage: ('truncate', n), ('flip', [(offset, xor)]), ('append', bytes), or ('flip_in', tensor, i, xor):
# the i-th byte of a tensor's data. Offsets are taken modulo the file's (or the tensor's) length.
FILE_DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("flip_in"), st.sampled_from(["head.weight", "head.bias", "embedding.weight", "param/head.weight",
                                                  "optim/t", "carry/0"]),
              st.integers(0, 10**6), st.sampled_from([0x40, 0x80, 0x7f, 0xff, 0x01])),
)


def damage_bytes(path, damage) -> None:
    kind, *what = damage
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if kind == "truncate":
        data = data[:what[0] % len(data)]
    elif kind == "flip":
        for offset, xor in what[0]:
            data[offset % len(data)] ^= xor
    elif kind == "append":
        data += what[0]
    else:
        name, index, xor = what
        try:
            begin, end = tensor_offsets(bytes(data), name)
        except KeyError:
            return
        if end > begin:
            data[begin + index % (end - begin)] ^= xor
    with open(path, "wb") as f:
        f.write(bytes(data))


@st.composite
def meta_edit(draw, meta: dict):
    """('set', path, value) or ('del', path) somewhere in the charrnn metadata of a file."""
    paths = [p for p in json_paths(meta) if p]
    path = draw(st.sampled_from(paths))
    if draw(st.booleans()):
        return "del", path, None
    return "set", path, draw(JSON_VALUES)


def apply_meta_edit(path, edit) -> None:
    arrays, meta = read_file(path)
    action, where, new = edit
    write_raw(path, arrays, edit_json(meta, where, action, new))


@st.composite
def array_edit(draw, arrays: dict):
    """A tensor replaced (another shape, dtype or extreme values), removed, or one added."""
    names = sorted(arrays)
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["shape", "dtype", "extreme", "remove", "add", "empty", "scalar"]))
    if kind == "extreme":
        return kind, name, draw(st.sampled_from([1e308, -1e308, 3e38, -3e38, 1e-45, 65504.0, 1e30]))
    if kind == "dtype":
        return kind, name, draw(st.sampled_from(["float16", "float64", "int64", "uint8", "int32", "float32"]))
    if kind == "shape":
        return kind, name, tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
    return kind, name, draw(st.sampled_from(["extra", "param/extra", "optim/extra", "carry/9", "head.weight"]))


def apply_array_edit(path, edit) -> None:
    arrays, meta = read_file(path)
    kind, name, what = edit
    old = arrays[name]
    if kind == "extreme":
        if old.dtype.kind == "f":
            arrays[name] = np.full(old.shape, what if old.dtype != np.float16 else 65504.0, old.dtype)
        else:
            arrays[name] = np.full(old.shape, np.iinfo(old.dtype).max, old.dtype)
    elif kind == "dtype":
        arrays[name] = old.astype(what)
    elif kind == "shape":
        arrays[name] = np.zeros(what, old.dtype)
    elif kind == "remove":
        del arrays[name]
    elif kind == "add":
        arrays[what] = np.zeros(3, np.float32)
    elif kind == "empty":
        arrays[name] = np.zeros((0,) + old.shape[1:], old.dtype)
    else:
        arrays[name] = np.zeros((), old.dtype)
    write_raw(path, arrays, meta)


# ---------------------------------------------------------------- model files, for every reader


def readers(run, text, out_dir, clf=False):
    """The commands that read a model file: each one's arguments."""
    if clf:
        return [["info", run], ["eval", "-c", run], ["classify", text, "-c", run, "--top-k", 2]]
    return [["info", run], ["sample", "-c", run, "--length", 12, "--seed", 3, "-n", 2],
            ["eval", "-c", run], ["eval", text, "-c", run],
            ["annotate", text, "-c", run, "--out", os.path.join(out_dir, "page.html"), "-q"],
            ["annotate", text, "-c", run, "--json", "--top-k", 3]]


def read_everywhere(runs, place, damage, which="a"):
    """Copy run `which`, damage its model files with damage(path), run every reader; each is clean and
    writes nothing into the run or beside it."""
    root = place()
    run = copy_run(runs, which, root)
    for name in (layout.BEST_FILE, layout.MODEL_FILE):
        damage(os.path.join(run, name))
    text = runs / ("clf.tsv" if which == "clf" else "text.txt")
    before = Snapshot(root)
    for args in readers(run, text, root, clf=which == "clf"):
        outcome(args)
    assert Snapshot(root, skip=["page.html"]) == before


@SWEEP
@given(damage=FILE_DAMAGE)
@example(damage=("flip_in", "head.weight", 3, 0x40))  # the exponent of the first weight: about 1e37
def test_a_model_file_damaged_byte_by_byte_is_refused_cleanly_by_every_reader(runs, place, damage):
    read_everywhere(runs, place, lambda p: damage_bytes(p, damage))


@SWEEP
@given(data=st.data())
def test_a_model_files_tensors_replaced_are_refused_cleanly_by_every_reader(runs, place, data):
    arrays, _ = read_file(runs / "a" / layout.BEST_FILE)
    edit = data.draw(array_edit(arrays))
    read_everywhere(runs, place, lambda p: apply_array_edit(p, edit))


@SWEEP
@given(data=st.data())
def test_a_model_files_metadata_edited_anywhere_is_refused_cleanly_by_every_reader(runs, place, data):
    """Any entry of the metadata removed, or replaced by any JSON value (huge numbers, control characters,
    lone surrogates, NaN, nesting)."""
    _, meta = read_file(runs / "a" / layout.BEST_FILE)
    edit = data.draw(meta_edit(meta))
    read_everywhere(runs, place, lambda p: apply_meta_edit(p, edit))


@SWEEP
@given(data=st.data())
def test_a_classifiers_metadata_edited_anywhere_is_refused_cleanly_by_every_reader(runs, place, data):
    _, meta = read_file(runs / "clf" / layout.BEST_FILE)
    edit = data.draw(meta_edit(meta))
    read_everywhere(runs, place, lambda p: apply_meta_edit(p, edit), "clf")


TOKEN_EDITS = st.sampled_from(["duplicate", "control", "empty", "long", "many"])


def token_edit(kind, index, token="x"):
    def edit(path):
        arrays, meta = read_file(path)
        tokens = meta["tokens"]
        if kind == "duplicate":
            tokens[index] = tokens[index - 1]
        elif kind == "many":
            meta["tokens"] = tokens + [tokens[4]] * 5000
        else:
            tokens[index] = {"control": CONTROL[index % len(CONTROL)], "surrogate": SURROGATES[index % 3],
                             "empty": "", "long": token * 3}[kind]
        write_raw(path, arrays, meta)
    return edit


@SWEEP
@given(kind=TOKEN_EDITS, index=st.integers(3, 20), token=HOSTILE_TEXT)
def test_a_vocabulary_of_hostile_tokens_is_refused_or_used_cleanly(runs, place, kind, index, token):
    read_everywhere(runs, place, token_edit(kind, index, token))


@pytest.mark.parametrize("index", [3, 10])
def test_a_vocabulary_holding_a_lone_surrogate_is_refused_or_used_cleanly(runs, place, index):
    read_everywhere(runs, place, token_edit("surrogate", index))


def terminal_safe(text: str) -> bool:
    """No character that moves the cursor, rings, retitles or reverses the terminal: C0 controls but
    newline and tab, DEL, C1 controls, bidirectional overrides."""
    return not any((ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160 or c in "\u202a\u202b\u202c\u202d\u202e"
                   "\u2066\u2067\u2068\u2069" for c in text)


@pytest.mark.parametrize("which", ["a", "clf"])
def test_control_characters_in_a_vocabulary_or_label_never_reach_the_terminal_raw(runs, place, which):
    root = place()
    run = copy_run(runs, which, root)
    for name in (layout.BEST_FILE, layout.MODEL_FILE):
        path = os.path.join(run, name)
        arrays, meta = read_file(path)
        for i, c in enumerate(["\x1b", "\x07", "\u202e", "\x9b"]):
            meta["tokens"][5 + i] = c
        if which == "clf":
            meta["labels"] = ["\x1b]0;pwned\x07", "\u202eesorp"]
        write_raw(path, arrays, meta)
    for args in readers(run, runs / ("clf.tsv" if which == "clf" else "text.txt"), root, clf=which == "clf"):
        code, out, err = outcome(args)
        assert terminal_safe(err), (args, err)
        if args[0] in ("info", "eval"):
            assert terminal_safe(out), (args, out)


# The origin a fine-tuned run records (finetune.origin), as info shows it
ORIGIN = {"model_file": "/elsewhere/model.safetensors", "step": 3, "vocab": "kept", "base_tokens": 5, "added": ["q"],
          "unk_tokens": 0, "unseen": [], "n_unseen": 0}


@SWEEP
@given(key=st.sampled_from(sorted(ORIGIN)), value=JSON_VALUES, vocab=st.sampled_from(["kept", "extended"]))
@example(key="added", value=5, vocab="extended")
@example(key="unk_tokens", value="many", vocab="kept")
def test_a_hostile_origin_is_shown_cleanly(runs, place, key, value, vocab):
    def edit(path):
        arrays, meta = read_file(path)
        meta["origin"] = {**ORIGIN, "vocab": vocab, key: value}
        write_raw(path, arrays, meta)
    read_everywhere(runs, place, edit)


# ---------------------------------------------------------------- state files, on --resume


def resume_damaged(runs, place, damage, which="a"):
    """Copy run `which`, damage(state path), resume: clean; refused means nothing in the run or beside it
    changed; a resumed run saves a loadable model."""
    root = place()
    run = copy_run(runs, which, root)
    damage(os.path.join(run, layout.STATE_FILE))
    before = Snapshot(root)
    code, _, err = outcome(["train", "--resume", run, "--max-steps", 6, "-q"])
    if code:
        assert Snapshot(root) == before, (err, before.diff(Snapshot(root)))
    else:
        charrnn.load(run)
    return code, err


@SWEEP
@given(damage=FILE_DAMAGE)
def test_a_state_file_damaged_byte_by_byte_is_refused_before_anything_is_written(runs, place, damage):
    resume_damaged(runs, place, lambda p: damage_bytes(p, damage))


@SWEEP
@given(data=st.data())
def test_a_state_files_tensors_replaced_are_refused_before_anything_is_written(runs, place, data):
    arrays, _ = read_file(runs / "a" / layout.STATE_FILE)
    edit = data.draw(array_edit(arrays))
    resume_damaged(runs, place, lambda p: apply_array_edit(p, edit))


@SWEEP
@given(data=st.data(), which=st.sampled_from(["a", "lines"]))
def test_a_state_files_metadata_edited_anywhere_is_refused_before_anything_is_written(runs, place, data, which):
    _, meta = read_file(runs / which / layout.STATE_FILE)
    edit = data.draw(meta_edit(meta))
    resume_damaged(runs, place, lambda p: apply_meta_edit(p, edit), which)


@pytest.mark.parametrize("other", ["b"])
def test_a_state_file_from_another_run_is_refused_before_anything_is_written(runs, place, other):
    """b has a larger vocabulary: the run would train on, decoding its ids through the wrong one."""
    code, err = resume_damaged(runs, place, lambda p: shutil.copyfile(runs / other / layout.STATE_FILE, p))
    assert code == 1, err


def test_a_state_file_of_another_mode_is_refused_before_anything_is_written(runs, place):
    code, err = resume_damaged(runs, place, lambda p: shutil.copyfile(runs / "lines" / layout.STATE_FILE, p))
    assert code == 1, err


@pytest.mark.parametrize("name", [layout.MODEL_FILE, layout.BEST_FILE])
def test_a_model_file_from_another_run_is_read_as_itself_and_resume_puts_the_runs_own_back(runs, place, name):
    """Readers use it (a model file is self-contained); resuming exports the run's own model again."""
    root = place()
    run = copy_run(runs, "a", root)
    shutil.copyfile(runs / "b" / name, os.path.join(run, name))
    for args in readers(run, runs / "text.txt", root):
        outcome(args)
    assert outcome(["train", "--resume", run, "--max-steps", 6, "-q"]).exit_code == 0
    assert charrnn.load(os.path.join(run, layout.MODEL_FILE)).vocab.tokens == charrnn.load(runs / "a").vocab.tokens


# ---------------------------------------------------------------- logs, for plot and --resume

LONG_NUMBER = b'{"step": ' + b"9" * 5000 + b"}"  # more digits than Python converts to an int by default
LOG_LINES = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["step", "train_loss", "val_loss", "lr", "elapsed", "epoch"]), JSON_VALUES,
                    min_size=1).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=40),
    st.sampled_from([b"\xff\xfe{", b'{"step": NaN, "val_loss": Infinity}', b'{"step": 1e999}', DEEP.encode(),
                     LONG_NUMBER, b'{"step": 3, "train_loss": "x"}', b"\x00" * 10,
                     b'{"step": 1, "step": 2}', b'{"step": [1], "val_loss": {"a": 1}}']),
)


def damage_log(path, lines, where):
    with open(path, "rb") as f:
        data = f.read()
    cut = min(where, len(data))
    with open(path, "wb") as f:
        f.write(data[:cut] + b"\n".join(lines) + (b"\n" if lines else b"") + data[cut:])


def log_damaged(runs, place, lines, where, plot=True):
    root = place()
    run = copy_run(runs, "a", root)
    damage_log(os.path.join(run, layout.LOG_FILE), lines, where)
    before = Snapshot(root)
    if plot:
        outcome(["plot", run, "--out", os.path.join(root, "loss.png")])
        assert Snapshot(root, skip=["loss.png"]) == before
    outcome(["info", run])
    resumed = outcome(["train", "--resume", run, "--max-steps", 6, "-q"])
    if resumed.exit_code:
        assert Snapshot(root, skip=["loss.png"]) == before





@SWEEP
@given(lines=st.lists(LOG_LINES, max_size=3), where=st.integers(0, 2000))
def test_a_log_with_hostile_lines_resumes_or_is_refused_cleanly(runs, place, lines, where):
    log_damaged(runs, place, lines, where, plot=False)


@settings(SWEEP, max_examples=15)
@given(lines=st.lists(LOG_LINES.filter(lambda b: b not in (DEEP.encode(), LONG_NUMBER) and _utf8(b)), max_size=3),
       where=st.integers(0, 2000))
@example(lines=[b'{"step": [1, 2, 3], "val_loss": 2}'], where=10**6)
def test_a_log_with_hostile_lines_is_plotted_or_refused_cleanly(runs, place, lines, where):
    log_damaged(runs, place, lines, where)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(SWEEP, max_examples=15)
@given(lines=st.lists(LOG_LINES, min_size=1, max_size=3), where=st.integers(0, 2000))
@example(lines=[b"\xff\xfe{"], where=0)
@example(lines=[DEEP.encode()], where=10**6)
@example(lines=[LONG_NUMBER], where=0)
def test_a_log_with_any_bytes_is_plotted_or_refused_cleanly_and_resumes(runs, place, lines, where):
    log_damaged(runs, place, lines, where)


# ---------------------------------------------------------------- run directories: symlinks to victims

VICTIM = b"the victim's own bytes: nothing charrnn does may change them\n" * 50


def commands_on(run, text, root):
    """Every command that reads or writes a run directory, their outputs in the run (the defaults)."""
    return [["train", "--resume", run, "--max-steps", 6, "-q"], ["sample", "-c", run, "--length", 10, "--seed", 1],
            ["sample", "-c", run, "--length", 10, "--seed", 1, "--novelty"], ["eval", "-c", run],
            ["annotate", text, "-c", run, "-q"], ["plot", run], ["info", run],
            ["train", "--resume", run, "--max-steps", 8, "-q"]]


def symlinked(runs, place, entry, victim_kind):
    """Run 'a' with `entry` replaced by a symlink to a victim outside the run (a copy of the entry, so that
    commands read something sensible, or foreign bytes); every command: clean, the victim untouched."""
    root = place()
    run = copy_run(runs, "a", root)
    victims = os.path.join(root, "victims")
    os.makedirs(victims)
    inside = os.path.join(run, entry)
    victim = os.path.join(victims, os.path.basename(entry))
    if victim_kind == "copy" and os.path.isdir(inside):
        shutil.copytree(inside, victim)
    elif victim_kind == "copy" and os.path.exists(inside):
        shutil.copyfile(inside, victim)
    else:
        with open(victim, "wb") as f:
            f.write(VICTIM)
    if os.path.isdir(inside) and not os.path.islink(inside):
        shutil.rmtree(inside)
    elif os.path.lexists(inside):
        os.unlink(inside)
    os.symlink(victim, inside)
    before = Snapshot(victims)
    outside = Snapshot(root, skip=["run", "victims"])
    for args in commands_on(run, runs / "text.txt", root):
        outcome(args)
        # a data folder kept elsewhere (a symlink) may gain the novelty index: a new file, nothing overwritten
        after = Snapshot(victims, skip=["data/train_index.npy"] if entry == "data" else ())
        assert after == before, (args, before.diff(after))
        assert Snapshot(root, skip=["run", "victims"]) == outside, args


SAFE_LINKS = [layout.STATE_FILE, layout.MODEL_FILE, layout.BEST_FILE, "data", "data/train.npy", "data/val.npy",
              layout.PLOT_FILE, "annotate.html", "data/train_index.npy"]


@pytest.mark.parametrize("victim_kind", ["copy", "foreign"])
@pytest.mark.parametrize("entry", SAFE_LINKS)
def test_a_symlink_in_the_run_never_leads_a_command_to_write_its_target(runs, place, entry, victim_kind):
    symlinked(runs, place, entry, victim_kind)


@pytest.mark.parametrize("victim_kind", ["copy", "foreign"])
@pytest.mark.parametrize("entry", [layout.LOCK_FILE, layout.LOG_FILE])
def test_a_symlinked_lock_or_log_never_leads_train_to_write_its_target(runs, place, entry, victim_kind):
    symlinked(runs, place, entry, victim_kind)


# ---------------------------------------------------------------- run directories a crash can leave

CORPUS_FILES = {"a": "a.txt"}


@st.composite
def crash_leftovers(draw):
    """What a run directory holds when its process died at some point of a fresh run or a later save.

    stage: how far the first save got (data written, the first log lines, the state renamed, then the
    model, then best); log_cut: where the log's last write was torn; plus temp files of a save and a
    lock file a kill -9 leaves (the kernel's lock is gone with the process)."""
    stage = draw(st.sampled_from(["data", "log", "state", "model", "best"]))
    return {"stage": stage, "log_cut": draw(st.integers(0, 700)), "temp": draw(st.booleans()),
            "lock": draw(st.booleans()), "missing_data": draw(st.sampled_from([None, None, "val.npy"]))}


def leave_as_after_a_crash(run, leftovers):
    stage = leftovers["stage"]
    order = ["data", "log", "state", "model", "best"]
    keep = order[:order.index(stage) + 1]
    for name, step in ((layout.LOG_FILE, "log"), (layout.STATE_FILE, "state"), (layout.MODEL_FILE, "model"),
                       (layout.BEST_FILE, "best")):
        if step not in keep:
            os.unlink(os.path.join(run, name))
    log = os.path.join(run, layout.LOG_FILE)
    if os.path.exists(log) and stage == "log":
        with open(log, "rb") as f:
            data = f.read()
        with open(log, "wb") as f:
            f.write(data[:max(1, min(leftovers["log_cut"], len(data)))])
    if leftovers["temp"]:
        with open(os.path.join(run, f".{layout.STATE_FILE}.0123456789ab.tmp"), "wb") as f:
            f.write(b"half a checkpoint")
    if leftovers["lock"]:
        with open(os.path.join(run, layout.LOCK_FILE), "w") as f:
            f.write("12345 1700000000.000\n")
    if leftovers["missing_data"] and stage == "data":
        os.unlink(os.path.join(run, "data", leftovers["missing_data"]))


@SWEEP
@given(leftovers=crash_leftovers())
@example(leftovers={"stage": "log", "log_cut": 700, "temp": False, "lock": False, "missing_data": None})
def test_a_run_directory_a_crash_leaves_is_resumable_or_restartable(runs, place, leftovers):
    root = place()
    run = copy_run(runs, "a", root)
    leave_as_after_a_crash(run, leftovers)
    how = resumable_or_restartable(run, runs / "a.txt")
    assert how == ("restarted" if leftovers["stage"] in ("data", "log") else "resumed")


@SWEEP
@given(leftovers=crash_leftovers().filter(lambda s: s["stage"] != "log"))
def test_a_run_directory_a_crash_leaves_after_its_first_save_or_before_its_log_is_resumable_or_restartable(
        runs, place, leftovers):
    root = place()
    run = copy_run(runs, "a", root)
    leave_as_after_a_crash(run, leftovers)
    resumable_or_restartable(run, runs / "a.txt")


RUN_ENTRIES = [layout.STATE_FILE, layout.MODEL_FILE, layout.BEST_FILE, layout.LOG_FILE, "data/train.npy",
               "data/val.npy", "data"]


@SWEEP
@given(gone=st.sets(st.sampled_from(RUN_ENTRIES), min_size=1), which=st.sampled_from(["a", "lines", "clf"]))
def test_a_run_directory_missing_any_of_its_files_gives_clean_errors_everywhere(runs, place, gone, which):
    root = place()
    run = copy_run(runs, which, root)
    for entry in gone:
        path = os.path.join(run, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    text = runs / ("clf.tsv" if which == "clf" else "text.txt")
    for args in commands_on(run, text, root) + readers(run, text, root, clf=which == "clf"):
        outcome(args)


# ---------------------------------------------------------------- id files replaced

def _npy_variants(ids: np.ndarray):
    return {
        "pickled objects": lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "2-D": lambda p: np.save(p, ids.reshape(1, -1)),
        "float": lambda p: np.save(p, ids.astype(np.float32)),
        "Fortran 2-D": lambda p: np.save(p, np.asfortranarray(np.stack([ids, ids], 1))),
        "big-endian": lambda p: np.save(p, ids.astype(">u2")),
        "empty": lambda p: np.save(p, ids[:0]),
        "ids past the vocabulary": lambda p: np.save(p, np.full_like(ids, 250)),
        "negative ids": lambda p: np.save(p, -np.ones(len(ids), np.int64)),
        "huge ids": lambda p: np.save(p, np.full(len(ids), 2**63 - 1, np.int64)),
        "one id": lambda p: np.save(p, ids[:1]),
        "truncated": lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2),
        "header only": lambda p: open(p, "r+b").truncate(80),
        "not npy": lambda p: open(p, "wb").write(b"hello"),
        "a scalar": lambda p: np.save(p, np.uint8(3)),
        "bool": lambda p: np.save(p, ids > 5),
    }


@pytest.mark.parametrize("which", ["a", "lines"])
@pytest.mark.parametrize("split", ["train", "val", "train_offsets", "val_offsets"])
def test_a_replaced_id_file_is_refused_cleanly_by_every_command(runs, place, which, split):
    if which == "a" and split.endswith("offsets"):
        return
    ids = np.load(runs / which / "data" / f"{split}.npy")
    for what, replace in _npy_variants(ids).items():
        root = place()
        run = copy_run(runs, which, root)
        replace(os.path.join(run, "data", f"{split}.npy"))
        for args in commands_on(run, runs / "text.txt", root):
            before = Snapshot(root)
            code, _, err = outcome(args)
            if args[0] == "train" and code:  # refused: nothing written
                assert Snapshot(root) == before, (what, err)


# ---------------------------------------------------------------- corpora and text inputs

CORPUS_BYTES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda t: t.encode("utf-8")),
    st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\r\n", b"\x00"]),
              st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300),
              st.sampled_from([b"", b"\x00", b"\xff", b"\r", b"\xc3", b"\n\n\n"])).map(
        lambda t: t[0] + t[1].encode("utf-8") + t[2]),
    st.sampled_from([b"\n" * 100, b" " * 500, b"a" * 5000, b"\t\t\n", "\u00e9\u202e\x1b[31m\x07".encode() * 50,
                     b"\r" * 50, (stream_text(50) * 3).encode(), b"x\ty\n" * 30, b"\xef\xbb\xbf"]),
)
TRAIN_KINDS = [[], ["--mode", "lines"], ["--level", "word"], ["--mode", "lines", "--level", "word"],
               ["--task", "classify"]]


@SWEEP
@given(data=CORPUS_BYTES, kind=st.sampled_from(TRAIN_KINDS), errors=st.sampled_from(["strict", "replace"]))
def test_any_bytes_as_a_corpus_train_or_are_refused_cleanly_and_leave_no_unusable_run(runs, place, data, kind,
                                                                                     errors):
    root = place()
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "wb") as f:
        f.write(data)
    out = os.path.join(root, "out")
    code, _, err = outcome(["train", corpus, *TINY, *kind, "--errors", errors, "--max-steps", 2, "--eval-every", 2,
                            "--out", out, "-q"])
    if code == 0:
        charrnn.load(out)
    elif os.path.exists(out):
        resumable_or_restartable(out, runs / "a.txt")
    assert sorted(os.listdir(root)) == sorted(["corpus.txt"] + (["out"] if os.path.exists(out) else []))


@SWEEP
@given(data=CORPUS_BYTES, errors=st.sampled_from(["strict", "replace"]))
def test_any_bytes_as_a_text_to_score_annotate_classify_or_validate_on_are_clean(runs, place, data, errors):
    root = place()
    text = os.path.join(root, "text.txt")
    with open(text, "wb") as f:
        f.write(data)
    before = Snapshot(runs, skip=["a/annotate.html"])
    outcome(["eval", text, "-c", runs / "a", "--errors", errors])
    outcome(["annotate", text, "-c", runs / "a", "--errors", errors, "--out", os.path.join(root, "p.html"), "-q"])
    outcome(["annotate", text, "-c", runs / "lines", "--errors", errors, "--json"])
    outcome(["eval", text, "-c", runs / "clf", "--errors", errors])
    outcome(["classify", text, "-c", runs / "clf", "--errors", errors])
    outcome(["train", runs / "a.txt", *TINY, "--val", text, "--errors", errors, "--max-steps", 2, "--eval-every", 2,
             "--out", os.path.join(root, "withval"), "-q"])
    assert Snapshot(runs, skip=["a/annotate.html"]) == before


# ---------------------------------------------------------------- options of the commands

HOSTILE_NUMBERS = ["-1", "0", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", str(10**21), str(2**63), "1e400",
                   "0x10", "", " 3", "3.5", "-0", "1_000"]
OPTION_CASES = {
    "sample": (["--temp", "--top-k", "--top-p", "--length", "-n", "--seed", "--choices", "--chunk"],
               lambda run, text: ["sample", "-c", run, "--length", 8, "--seed", 1]),
    "eval": ([], lambda run, text: ["eval", "-c", run]),
    "annotate": (["--top-k", "--max-chars"], lambda run, text: ["annotate", text, "-c", run, "--json"]),
    "classify": (["--top-k"], None),
    "train": (["--lr", "--eval-every", "--log-every", "--max-epochs", "--clip", "--momentum", "--warmup",
               "--val-frac", "--seed", "--hidden", "--seq-len", "--batch-size", "--dropout", "--max-time",
               "--threads", "--patience", "--weight-decay"], None),
}
SAFE_LONG = {"--length": 10**4, "-n": 64, "--choices": 10**4, "--chunk": 10**4, "--max-chars": 10**6,
             "--hidden": 64, "--seq-len": 4096, "--batch-size": 256, "--threads": 16, "--max-epochs": 10**9}


def affordable(option, value) -> bool:
    """Values that would make a tiny example run long or large are the memory tests' and the bench's."""
    limit = SAFE_LONG.get(option)
    try:
        return limit is None or float(value) <= limit
    except ValueError:
        return True


def option_outcome(runs, root, command, option, value):
    if command == "train":
        args = ["train", runs / "a.txt", *[o for o in TINY], "--max-steps", 3, "--eval-every", 3,
                "--out", os.path.join(root, "out"), "-q", option, value]
        if option == "--max-time":
            args[args.index("--max-steps") + 1] = 3
    else:
        args = OPTION_CASES[command][1](runs / "a", runs / "text.txt") + [option, value]
    return outcome(args)


def known_to_fail(command, option, value):
    return command == "sample" and option == "--seed" and value.startswith("-")


@SWEEP
@given(command=st.sampled_from(["sample", "annotate", "train"]), data=st.data())
def test_hostile_option_values_are_clean_usage_errors_or_work(runs, place, command, data):
    option = data.draw(st.sampled_from(OPTION_CASES[command][0]))
    value = data.draw(st.sampled_from(HOSTILE_NUMBERS).filter(
        lambda v: affordable(option, v) and not known_to_fail(command, option, v)))
    option_outcome(runs, place(), command, option, value)


@pytest.mark.parametrize("value", ["-1", str(-(2**63))])
def test_a_negative_sample_seed_is_a_clean_usage_error(runs, place, value):
    option_outcome(runs, place(), "sample", "--seed", value)


# ---------------------------------------------------------------- the Python API

HOSTILE_ARGS = st.sampled_from([None, b"run", ["x"], 3, -1, 0, 1e308, float("nan"), "", "\ud800", np.int64(3),
                                np.float32(0.5), True, {}, 2**70, -(2**70), 0.5, object()])
API_CALLS = {
    "load": lambda runs, v: charrnn.load(v),
    "generate prime": lambda runs, v: charrnn.load(runs / "a").generate(prime=v, length=5, seed=0),
    "generate length": lambda runs, v: charrnn.load(runs / "a").generate(length=v, seed=0),
    "generate temperature": lambda runs, v: charrnn.load(runs / "a").generate(length=5, temperature=v, seed=0),
    "generate top_k": lambda runs, v: charrnn.load(runs / "a").generate(length=5, top_k=v, seed=0),
    "generate top_p": lambda runs, v: charrnn.load(runs / "a").generate(length=5, top_p=v, seed=0),
    "generate seed": lambda runs, v: charrnn.load(runs / "a").generate(length=5, seed=v),
    "samples n": lambda runs, v: charrnn.load(runs / "a").samples(v, length=5, seed=0),
    "score": lambda runs, v: charrnn.load(runs / "a").score(v),
    "annotate text": lambda runs, v: charrnn.load(runs / "a").annotate(v),
    "annotate top_k": lambda runs, v: charrnn.load(runs / "a").annotate("the fox", top_k=v),
    "annotate max_chars": lambda runs, v: charrnn.load(runs / "a").annotate("the fox", max_chars=v),
    "classify texts": lambda runs, v: charrnn.load(runs / "clf").classify(v),
    "classify top_k": lambda runs, v: charrnn.load(runs / "clf").classify(["def f"], top_k=v),
    "evaluate": lambda runs, v: charrnn.load(runs / "clf").evaluate(v),
}
HUGE_WORK = {"generate length", "samples n", "annotate max_chars"}


@settings(SWEEP, max_examples=40)
@given(call=st.sampled_from(sorted(API_CALLS)), value=HOSTILE_ARGS)
@example(call="load", value=b"run")
@example(call="load", value=["x"])
def test_the_api_returns_or_raises_its_own_errors_whatever_the_arguments(runs, call, value):
    if call in HUGE_WORK and isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
            and abs(value) > 1e6:
        return
    try:
        API_CALLS[call](runs, value)
    except CharRNNError:
        pass


TRAIN_KWARGS = ["seq_len", "batch_size", "hidden", "lr", "max_steps", "eval_every", "seed", "mode", "level",
                "cell", "dropout", "val_frac"]


@settings(SWEEP, max_examples=30)
@given(key=st.sampled_from(TRAIN_KWARGS), value=HOSTILE_ARGS)
@example(key="seq_len", value=np.int64(16))
@example(key="seed", value=None)
def test_charrnn_train_with_any_argument_trains_or_refuses_and_leaves_no_unusable_run(runs, place, key, value):
    if key in ("max_steps", "hidden", "batch_size", "seq_len") and isinstance(value, (int, float, np.number)) \
            and not isinstance(value, bool) and abs(value) > 1e4:
        return
    root = place()
    out = os.path.join(root, "out")
    options = {"cell": "lstm", "layers": 1, "hidden": 8, "embed": 8, "dropout": 0.0, "schedule": "constant",
               "warmup": 0, "batch_size": 2, "seq_len": 8, "patience": 0, "max_steps": 2, "eval_every": 2,
               "max_time": "2s"}  # max_steps=None would otherwise leave the default budget: five minutes
    options[key] = value
    try:
        charrnn.train(str(runs / "a.txt"), out, **options)
    except CharRNNError:
        pass
    if os.path.exists(out):
        resumable_or_restartable(out, runs / "a.txt")


# ---------------------------------------------------------------- memory with a bound

def no_eos(params, vocab):
    params["head.bias"][vocab.eos] = -50.0  # never ends a sample early: every sample is as long as asked


def peak_of(fn) -> int:
    """tracemalloc's peak (bytes) while fn runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_sampling_several_samples_holds_a_block_whatever_their_length(tmp_path, monkeypatch):
    # the samples after a group's first are kept in one block of KEEP_BLOCK_TOKENS, the rest on disk: made
    # small here, 36,000 more kept tokens must cost about nothing (they cost 75 bytes each when all were held)
    from charrnn.work import sampling
    from tiny_runs import make_run
    monkeypatch.setattr(sampling, "KEEP_BLOCK_TOKENS", 256)
    make_run(tmp_path, "abcdefgh ", layers=1, hidden=8, edit=no_eos)
    model = charrnn.load(tmp_path)

    def draw(length):
        lengths = [sum(map(len, sample)) for sample in model.sample_stream(3, length=length, seed=0)]
        assert lengths == [length] * 3
    draw(50)  # compiled and warm
    short, long = peak_of(lambda: draw(2_000)), peak_of(lambda: draw(20_000))
    assert long - short < 32 << 10, (short, long)


def test_annotating_a_large_file_holds_about_what_it_shows(runs, tmp_path):
    # both files show the same first 5,000 characters (the default --max-chars): what the 10 MB file costs
    # beyond the short one is what reading it costs
    big, short = tmp_path / "big.txt", tmp_path / "short.txt"
    big.write_bytes(stream_text(200).encode() * 10_000)  # about 10 MB
    short.write_bytes(big.read_bytes()[:6_000])
    assert annotate_mod.MAX_CHARS == 5_000

    def peak(path):
        return peak_of(lambda: outcome(["annotate", path, "-c", runs / "a", "--out", tmp_path / "p.html", "-q"]))
    peak(short)  # warm
    assert peak(big) - peak(short) < 1_000_000, (peak(big), peak(short))


# A child with its address space limited: it runs out of memory quickly where a reader has no bound, and
# reports its peak resident memory whatever happens (the native code of a reader is invisible to tracemalloc).
LIMITED = r"""
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from charrnn import cli
try:
    cli.main(sys.argv[2:])
finally:
    # VmHWM, not ru_maxrss: a child forked from a large pytest process inherits its parent's high-water
    # mark into ru_maxrss across exec, whereas VmHWM belongs to the address space exec made new
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    sys.stderr.write("\npeak %d\n" % (hwm * 1024))
"""


def limited_child(args, *, stdin=subprocess.DEVNULL, limit=2 << 30, timeout=60):
    """(exit code, stderr without the peak line, peak RSS in bytes) of `charrnn ARGS` in a limited child."""
    env = {**os.environ, **REFERENCE, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(charrnn.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(limit), *map(str, args)], stdin=stdin,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=timeout)
    err = proc.stderr.decode("utf-8", "replace")
    body, _, peak = err.rstrip().rpartition("\npeak ")
    return proc.returncode, body, int(peak)


ENDLESS = {
    "a corpus": lambda runs, out: ["train", "/dev/zero", *TINY, "--max-steps", 2, "--out", out],
    "--val": lambda runs, out: ["train", runs / "a.txt", "--val", "/dev/zero", *TINY, "--max-steps", 2, "--out", out],
    "eval": lambda runs, out: ["eval", "/dev/zero", "-c", runs / "a"],
    "annotate": lambda runs, out: ["annotate", "/dev/zero", "-c", runs / "a", "--json"],
    "classify": lambda runs, out: ["classify", "/dev/zero", "-c", runs / "clf"],
}


@pytest.mark.skipif(not os.path.exists("/dev/zero") or not sys.platform.startswith("linux"),
                    reason="/dev/zero and /proc/self/status (Linux)")
@pytest.mark.parametrize("what", ENDLESS)
def test_an_endless_input_is_refused_within_300_mb(runs, tmp_path, what):
    code, err, peak = limited_child(ENDLESS[what](runs, tmp_path / "out"))
    assert code in (1, 2) and "Traceback" not in err and err.rstrip().split("\n")[-1].startswith("Error: "), err
    assert "out of memory" not in err and peak < 300 << 20, (peak, err)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status (Linux)")
def test_a_model_file_declaring_a_huge_extra_tensor_is_refused_in_the_memory_of_a_healthy_file(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    for name in (layout.BEST_FILE, layout.MODEL_FILE):
        header_bomb(run / name, runs / "a" / name, 600 << 20)
    code, err, peak = limited_child(["info", run])
    assert code == 1 and err.rstrip().split("\n")[-1].startswith("Error: "), err
    healthy = limited_child(["info", runs / "a"])
    assert healthy[0] == 0, healthy
    assert peak < healthy[2] + (32 << 20), (peak, healthy[2], err)  # the 600 MB declared never came near


# ---------------------------------------------------------------- a loss beyond exp's range


@pytest.mark.parametrize("how", ["eval", "annotate", "score"])
def test_a_loss_above_709_nats_is_reported_not_a_traceback(runs, place, how):
    root = place()
    run = copy_run(runs, "a", root)

    def far_off(path):
        arrays, meta = read_file(path)
        arrays["head.bias"] = (np.random.default_rng(0).standard_normal(arrays["head.bias"].shape) * 1e4
                               ).astype(arrays["head.bias"].dtype)
        write_raw(path, arrays, meta)
    for name in (layout.BEST_FILE, layout.MODEL_FILE):
        far_off(os.path.join(run, name))
    if how == "score":
        score = charrnn.load(run).score(stream_text(20))
        assert score.loss > 709 and score.perplexity == float("inf")
    elif how == "eval":
        assert outcome(["eval", "-c", run]).exit_code == 0
    else:
        assert outcome(["annotate", runs / "text.txt", "-c", run, "--out", os.path.join(root, "p.html"),
                        "-q"]).exit_code == 0
