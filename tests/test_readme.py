"""The README's and docs' promises that code can check: the quick start's shape, the API example and the
PyTorch snippet run (the snippet matches our model), and every relative link points at a file and heading
that exist."""

import os
import re

import numpy as np
import pytest

from charrnn.files import checkpoint
from charrnn.core import model
from tiny_runs import invoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
PYTORCH_PAGE = open(os.path.join(ROOT, "docs", "pytorch.md"), encoding="utf-8").read()
# the manual's pages (docs/ also holds the figures they show)
DOC_PAGES = [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")]


def section_code(title, lang):
    section = README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def anchors(text):
    """The GitHub anchors of a markdown text's headings."""
    return {re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_every_relative_link_in_readme_and_docs_reaches_a_file_and_heading():
    pages = ["README.md", "ARCHITECTURE.md", "corpora/README.md"] + DOC_PAGES
    checked = 0
    for page in pages:
        text = open(os.path.join(ROOT, page), encoding="utf-8").read()
        for target, anchor in re.findall(r"\]\(([^)#\s:]*)(?:#([\w\-]+))?\)", text):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target)) if target else \
                os.path.join(ROOT, page)
            assert os.path.exists(path), f"{page} links to {target}, which does not exist"
            if anchor:
                assert anchor in anchors(open(path, encoding="utf-8").read()), f"{page}: no heading #{anchor} in {target or page}"
            checked += 1
    assert checked > 10


def test_quick_start_is_two_commands_install_train_and_install_test():
    lines = [line for line in section_code("Quick start", "sh").splitlines() if line.strip()]
    assert len(lines) == 2
    assert "pip install" in lines[0] and lines[0].endswith("charrnn train")
    assert "pip install" in lines[1] and "pytest" in lines[1]


@pytest.mark.parametrize("mode", ["stream", "lines"])
def test_pytorch_snippet_loads_a_checkpoint_and_samples(tmp_path, mode):
    torch = pytest.importorskip("torch")
    text = "\n".join(["the cat sat on the mat", "a dog ran in the fog", "one two three"] * 20) + "\n"
    (tmp_path / "c.txt").write_text(text)
    run = tmp_path / "checkpoints" / "shakespeare"
    code, _, err = invoke(["train", tmp_path / "c.txt", "--mode", mode, "--hidden", "16", "--embed", "8",
                           "--layers", "2", "--batch-size", "4", "--seq-len", "16", "--max-steps", "5",
                           "--precision", "float32", "--out", run, "-q"])  # the checkpoint the snippet loads
    # (float32: PyTorch's products; a bf16 model's differ by bfloat16 rounding, docs/pytorch.md)
    assert code == 0, err

    code = re.search(r"```python\n(.*?)```", PYTORCH_PAGE, re.S).group(1)
    namespace = {}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)

    # the rebuilt torch model computes what charrnn computes
    params, config, meta = checkpoint.load_model(run / "best.safetensors")
    x = np.random.default_rng(0).integers(0, config.vocab_size, (2, 9))
    _, _, cache = model.forward(params, config, x, want_logits=True)
    with torch.no_grad():
        logits, _ = namespace["net"](torch.from_numpy(x))
    np.testing.assert_allclose(logits.numpy(), cache["logits"], rtol=1e-4, atol=1e-5)
    sampled = "".join(namespace["text"])
    assert set(sampled) <= set(meta["tokens"][3:])
    if mode == "lines":
        assert "\n" not in sampled


def test_python_api_example_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "The"]
    (tmp_path / "corpus.txt").write_text(" ".join(rng.choice(words, 1200)) + "\n")
    code = section_code("Python API", "python")
    namespace = {}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["run"] == "checkpoints/mine" and (tmp_path / "checkpoints/mine/best.safetensors").exists()
    assert namespace["text"].startswith("The ") and len(namespace["text"]) > 4
    s = namespace["s"]
    assert s.tokens == len("The quick brown fox") - 1 and s.unknown == 0
    out = capsys.readouterr().out
    assert f"perplexity {s.perplexity:.2f}" in out
    rows = namespace["rows"]
    assert len(rows) == s.tokens and f"rank {rows[0].rank}" in out
    # annotate runs the weights in float64 (work/annotate.py): eval's float32 rounding, or a bf16 model's
    bf16 = checkpoint.load_model(tmp_path / "checkpoints/mine/best.safetensors")[1].precision == "bf16"
    assert -np.mean([r.logprob for r in rows]) == pytest.approx(s.loss, abs=1e-3 if bf16 else 1e-6)
    assert namespace["states"].shape == (len("The quick brown fox"), 32)


def test_the_api_pages_example_of_what_the_other_commands_use_runs(tmp_path, capsys):
    test_python_api_example_runs(tmp_path, capsys)  # its run, checkpoints/mine, and corpus.txt
    page = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    section = page.split("## What the other commands use\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        exec(compile(code, "docs/api.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("model") and "found verbatim in the training text" in out
    session, model = namespace["session"], namespace["model"]
    assert session.text.startswith("The " + namespace["choices"][0].text + "quick ")
    assert namespace["novelty"].built and namespace["ann"].text_chars == 300
    assert namespace["page"] == "corpus.html" and (tmp_path / "corpus.html").exists()
    assert len(model.describe()) == len([line for line in out.splitlines() if line.startswith(
        tuple(f"{label:<16}  " for label, _ in model.describe()))])


def test_every_test_a_guarantee_names_exists():
    """docs/files.md's guarantees cite their tests as `tests/FILE.py::name` (or `::name` for the file
    before): each must be a test function in that file, or the promise has nothing behind it."""
    page = open(os.path.join(ROOT, "docs", "files.md"), encoding="utf-8").read()
    table = page.split("## Guarantees", 1)[1]
    cited, current = 0, None
    for file, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", table):
        current = file or current
        if not name:
            assert not file or os.path.exists(os.path.join(ROOT, file)), file
            continue
        source = open(os.path.join(ROOT, current), encoding="utf-8").read()
        assert re.search(rf"^def {name}\(", source, re.M), f"{current}::{name} is cited but not defined"
        cited += 1
    assert cited > 40


def command_examples():
    """(page, argv after `charrnn`) of every charrnn command in README's and docs' sh and text blocks."""
    import shlex
    pages = ["README.md"] + DOC_PAGES
    for page in pages:
        text = open(os.path.join(ROOT, page), encoding="utf-8").read()
        for block in re.findall(r"```(?:sh|text)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\$ ", "", line.strip())
                words = shlex.split(line, comments=True) if re.match(r"(\.venv/bin/)?charrnn\b", line) else []
                if len(words) < 2:
                    continue
                argv = []
                for word in words[1:]:
                    if word in ("|", ">", "<", "&&", ";") or word.startswith((">", "2>")):
                        break
                    argv.append(word)
                yield page, argv


def test_every_command_example_names_a_real_command_and_real_options():
    """Each `charrnn ...` line the manual shows uses a command and options that exist: an example that
    has drifted from the command line (a renamed flag) fails here."""
    from charrnn import cli
    checked = 0
    for page, argv in command_examples():
        command = cli.cli.commands.get(argv[0])
        assert command is not None, f"{page}: charrnn {argv[0]} is not a command"
        known = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in argv[1:]:
            if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-[\d.e]+", word):
                assert word.split("=", 1)[0] in known, f"{page}: charrnn {' '.join(argv)}: no option {word}"
        checked += 1
    assert checked > 25
