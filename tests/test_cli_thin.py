"""The command line is a thin layer over the API: cli.py (and progress.py, which draws for it) import nothing
of charrnn but the API, the errors and the constants, and what a command prints comes from the API's
methods (Model.describe, Model.novelty, Model.session, the readers of a command's input)."""

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import charrnn
from tiny_runs import invoke

ROOT = Path(__file__).resolve().parent.parent
OLD = Path(__file__).resolve().parent / "old_runs"
ALLOWED = {"api", "errors", "constants", "progress"}


def charrnn_imports(path: Path) -> set[str]:
    """Every charrnn module a source file imports, by its dotted name under charrnn ("api", "work.sampling",
    "" for the package itself), however the import is written."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] != "charrnn":
                continue
            module = (node.module or "") if node.level else node.module.partition(".")[2]
            if module:
                found.add(module)
            else:  # `from . import api, __version__`: each name is a module, or the package's own attribute
                found.update(a.name if a.name != "__version__" else "" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "charrnn")
        elif isinstance(node, ast.Call) and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) \
                in ("__import__", "import_module"):
            found.add("<dynamic import>")
    return found


@pytest.mark.parametrize("name", ["cli", "progress"])
def test_the_command_line_imports_only_the_api_the_errors_and_the_constants(name):
    found = charrnn_imports(ROOT / "charrnn" / f"{name}.py")
    extra = sorted(found - ALLOWED - {""})  # "": the package's __version__, for --version
    assert not extra, f"{name}.py imports charrnn.{extra}: go through charrnn.api"


def test_the_command_line_opens_no_file_itself():
    """eval, classify, annotate and sample --prime-file read their input through the API (corpus.read_input,
    the one reader, below it); cli.py opens nothing."""
    tree = ast.parse((ROOT / "charrnn" / "cli.py").read_text(encoding="utf-8"))
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    called = {f.id if isinstance(f, ast.Name) else f.attr for f in calls if isinstance(f, (ast.Name, ast.Attribute))}
    assert not called & {"open", "fdopen", "read_bytes", "read_input", "read_stdin", "listdir", "scandir"}


def test_the_import_check_sees_every_spelling(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from . import api, __version__\nfrom .files import corpus\nfrom .work.sampling import X\n"
                      "import charrnn.runs.rundir\nfrom charrnn.errors import E\nimport importlib\n"
                      "importlib.import_module('charrnn.files.layout')\n")
    assert charrnn_imports(source) == {"api", "", "files", "work.sampling", "runs.rundir", "errors",
                                       "<dynamic import>"}


@pytest.fixture
def old_run(tmp_path):
    def copy(name):
        shutil.copytree(OLD / name, tmp_path / name)
        return tmp_path / name
    return copy


@pytest.mark.parametrize("name", ["lm-stream", "lm-lines", "classifier"])
def test_info_prints_what_describe_says(old_run, name):
    run = old_run(name)
    model = charrnn.load(run)
    rows = model.describe()
    width = max(len(label) for label, _ in rows)
    code, out, err = invoke(["info", run])
    assert code == 0 and not err
    assert out.splitlines() == [f"{label:<{width}}  {text}" for label, text in rows]
    described = dict(rows)
    # against the file itself, read by the safetensors library
    tensors = load_file(str(run / "best.safetensors"))
    assert described["parameters"] == f"{sum(t.size for t in tensors.values()):,}"
    assert described["file"] == str(run / "best.safetensors") == model.path
    assert described["vocabulary"].startswith(f"{model.vocab.size} char tokens")
    cell = {"lm-stream": "LSTM", "lm-lines": "GRU", "classifier": "LSTM(bidirectional=True)"}[name]
    assert described["torch.nn"] == f"loads into torch.nn.{cell} (load_state_dict, strict)"
    assert described["training"].startswith("20 steps, ")


def test_describe_says_which_cells_torch_cannot_load(tmp_path):
    from tiny_runs import make_run

    for cell in ("peephole", "simple-gru"):
        make_run(tmp_path / cell, "ab", cell=cell)
        described = dict(charrnn.load(tmp_path / cell).describe())
        assert described["torch.nn"].startswith(f"does not load: torch.nn has no {cell} cell")
        assert "training" not in described  # a file that records no training says nothing of it


def test_novelty_finds_each_samples_longest_stretch_and_copied_lines(old_run):
    stream = charrnn.load(old_run("lm-stream"))
    index = stream.novelty()
    train = stream.vocab.decode(np.load(stream.data_dir + "/train.npy"))
    assert index.built and not index.lines and index.tokens == len(train) and index.kept_in == stream.data_dir
    assert not stream.novelty().built  # stored beside the run: read back the second time
    for text in ("the quick brown fox sleeps", "zzq the lazy dogxx", "qqq", ""):
        # brute force, on characters: the longest piece of the text that the training text holds
        best = max((j - i for i in range(len(text)) for j in range(i + 1, len(text) + 1) if text[i:j] in train),
                   default=0)
        length, tokens, stretch = index.longest(text)
        assert (length, tokens) == (best, len(text)) and len(stretch) == best and stretch in train and stretch in text
    lines = charrnn.load(old_run("lm-lines"))
    index = lines.novelty()
    stored = {}
    for split in ("train", "val"):
        ids, offsets = (np.load(f"{lines.data_dir}/{split}{x}.npy") for x in ("", "_offsets"))
        stored[split] = {lines.vocab.decode(ids[a:b]) for a, b in zip(offsets[:-1], offsets[1:])}
    assert index.lines and index.tokens is None
    for line in sorted(stored["train"])[:3] + sorted(stored["val"] - stored["train"])[:3] + ["zzyzx"]:
        want = "train" if line in stored["train"] else "validation" if line in stored["val"] else None
        assert index.copied(line) == want


def test_a_session_offers_picks_types_and_writes(old_run):
    model = charrnn.load(old_run("lm-stream"))
    session = model.session("the ", temperature=0.8, seed=5)
    assert session.text == "the "
    choices = session.choices(model.vocab.size)
    probs = [c.prob for c in choices]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    assert {c.id for c in choices}.isdisjoint({model.vocab.unk, model.vocab.bos})  # never offered
    assert all(c.text == model.vocab.decode([c.id]) and not c.end for c in choices if c.id != model.vocab.eos)
    session.pick(choices[0])
    session.type("og")
    assert session.text == "the " + choices[0].text + "og"
    with pytest.raises(charrnn.VocabError):
        session.type("Ω")  # a character the model never saw: nothing is added
    assert session.text == "the " + choices[0].text + "og"
    wrote, ended = session.write(25)
    again = model.session("the ", temperature=0.8, seed=5)
    again.pick(choices[0]), again.type("og"), again.write(25)
    assert again.text == session.text and len(session.text) == len("the og") + 1 + wrote and (wrote == 25 or ended)
    with pytest.raises(charrnn.ConfigError):
        model.session("the ", temperature=-1)


def test_read_lines_gives_the_non_blank_lines_and_annotate_input_counts_what_it_cut(old_run, tmp_path):
    model = charrnn.load(old_run("lm-stream"))
    text = "the dog\n\n  \nsleeps over\r\nthe fox\n"
    (tmp_path / "t.txt").write_bytes(text.encode())
    assert model.read_lines(tmp_path / "t.txt") == ["the dog", "sleeps over", "the fox"]
    (tmp_path / "long.txt").write_text("the lazy dog " * 50)
    ann, source, counted = model.annotate_input(str(tmp_path / "long.txt"), top_k=2, max_chars=100)
    assert (source, counted, ann.text_chars, ann.cut) == (str(tmp_path / "long.txt"), True, 100, 13 * 50 - 100)
    ann, source, counted = model.annotate_input(None, max_chars=50)
    held = model.heldout_text()
    assert (source, counted, ann.text_chars, ann.cut) == ("the held-out split", True, 50, len(held) - 50)
    page = model.write_page(ann, str(tmp_path / "p.html"), source)
    assert page == str(tmp_path / "p.html") and "<html" in (tmp_path / "p.html").read_text()


def test_plot_and_the_built_in_corpora_through_the_api(old_run, tmp_path):
    run = old_run("lm-stream")
    assert charrnn.api.plot(str(run / "best.safetensors")) == str(run / "loss.png")
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert charrnn.api.plot(str(run), str(tmp_path / "c.png")) == str(tmp_path / "c.png")
    from charrnn.files import corpora

    rows = charrnn.api.builtin_corpora()
    assert [r["name"] for r in rows] == list(corpora.CORPORA)
    assert all(r["characters"] > 0 and r["mode"] in ("stream", "lines") for r in rows)


def test_eval_warns_of_unknown_tokens_beyond_what_the_model_trained_on(old_run):
    from charrnn.api import Score

    model = charrnn.load(old_run("lm-stream"))
    for trained, unknown, warned in ((0.0, 1, False), (0.0, 2, True), (0.01, 5, False), (0.01, 6, True),
                                     (float("nan"), 2, True), ("x", 1, False)):
        model.meta["data"]["train_unknown"] = trained
        # more than 1% of 100 tokens, and more than five times the share the model trained on
        assert model.mostly_unseen(Score(0.0, 100, unknown)) is warned, (trained, unknown)
