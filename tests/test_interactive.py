"""`charrnn sample --interactive`, driven through a real pseudo-terminal (pexpect).

The command runs in `bash -c '... > out.txt'`: its stdin and stderr are the
terminal pexpect holds, its stdout a file, so the test sees the display and the
final text apart, as a user redirecting the result would.
"""

import os
import re
import shlex
import sys

import numpy as np
import pytest

from charrnn.core import model
from tiny_runs import REFERENCE, invoke, make_run

pexpect = pytest.importorskip("pexpect")

CHARS = "abc \n"
OPTION = re.compile(r"(\d+)\) (\(end\)|'(?:[^'\\]|\\.)*'|\"[^\"]*\") (\d+\.\d)%")


def spawn(tmp_path, *args):
    out = tmp_path / "out.txt"
    command = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "charrnn", "sample", "--interactive",
                                                    "-c", tmp_path / "run", *args])
    child = pexpect.spawn("bash", ["-c", f"{command} > {shlex.quote(str(out))}"], encoding="utf-8", timeout=60,
                          dimensions=(50, 200), env={**os.environ, **REFERENCE})  # a terminal is tested here
    return child, out


def offered(child):
    """The options of the prompt just shown: [(label, percent)]."""
    child.expect("\n> ")
    line = [ln for ln in child.before.splitlines() if OPTION.search(ln)][-1]
    return [(label, float(p)) for _, label, p in OPTION.findall(line)]


def reference_probs(params, config, vocab, ids):
    """The model's next-token distribution after ids, by the training forward pass, UNK and BOS removed."""
    _, _, cache = model.forward(params, config, np.array([ids]), want_logits=True)
    z = cache["logits"][0, -1].astype(np.float64)
    z[[vocab.unk, vocab.bos]] = -np.inf
    p = np.exp(z - z.max())
    return p / p.sum()


def test_pick_type_and_let_the_model_write_then_ctrl_d_prints_the_text(tmp_path):
    params, config, vocab, _ = make_run(tmp_path / "run", CHARS, cell="gru", layers=1, hidden=8, embed=4)
    child, out = spawn(tmp_path, "--seed", "0", "--choices", "4", "--chunk", "5", "--prime", "ab")
    options = offered(child)
    assert len(options) == 4
    newline = vocab.encode("\n")[0]
    probs = reference_probs(params, config, vocab, [newline, *vocab.encode("ab")])
    top = np.argsort(-probs, kind="stable")[:4]
    assert [p for _, p in options] == pytest.approx([round(100 * probs[t], 1) for t in top], abs=0.051)
    choice = 1 if top[0] != vocab.eos else 2  # the likeliest token that is not the end
    child.sendline(str(choice))
    picked = vocab.decode([top[choice - 1]])
    offered(child)
    child.sendline("ca")  # type text
    offered(child)
    child.sendline("\\b")  # a leading backslash: typed as text, even a number would be
    offered(child)
    child.sendline("")  # the model writes up to 5 tokens
    offered(child)
    child.sendline("zz")  # a character the model never saw: refused, nothing added
    child.expect("not added")
    offered(child)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    text = out.read_text()
    assert text.startswith("ab" + picked + "cab") and text.endswith("\n")
    written = text[len("ab" + picked + "cab"):-1]
    assert len(written) <= 5 and set(written) <= set(CHARS) and "z" not in text
    assert "Interactive sampling" not in text  # the display stays on the terminal


def test_picking_the_end_token_ends_the_session(tmp_path):
    def favour_eos(params, vocab):
        params["head.bias"][:] = -5.0
        params["head.bias"][vocab.eos] = 5.0
    make_run(tmp_path / "run", CHARS, cell="rnn", layers=1, hidden=8, embed=4, edit=favour_eos)
    child, out = spawn(tmp_path, "--prime", "abc")
    child.expect("using .*run")  # which model it is, as the other commands say
    assert offered(child)[0][0] == "(end)"
    child.sendline("1")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert out.read_text() == "abc\n"


def test_off_a_terminal_it_is_a_one_line_error(tmp_path):
    make_run(tmp_path / "run", CHARS)
    code, out, err = invoke(["sample", "--interactive", "-c", tmp_path / "run"])
    # a way of running the command that cannot work: a usage error, exit 2 by docs/commands.md's one rule
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("Error: --interactive needs a terminal")
