"""The model size a time budget buys (config.budget_size), held to the sweep it was chosen from.

bench/budget.py records, one line each, what `charrnn train CORPUS --max-time M` reached with each size
on a quiet machine (bench/data/budget.jsonl). Given the speeds those runs measured, the rule must pick,
for every corpus and budget of the sweep, a size whose loss was within SWEEP_SLACK of the best one
measured; and on any machine it must grow with the budget and the speed, never past what the data
allows.
"""

import json
import os
from collections import defaultdict

import pytest

from charrnn.files import config
from charrnn.files.config import AUTO_SIZES, TrainConfig, budget_size, count_params, fill_auto_settings

SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "data", "budget.jsonl")
SWEEP_SLACK = 0.003  # nats/token: two sizes this close are a tie (one run each)
OPTIONS = {"cell": "lstm", "embed": 64, "dropout": None}


def choose(n_tokens, seconds, speed_of, vocab=68, per_step=1600, **train):
    """(layers, hidden) budget_size picks for a corpus of n_tokens and a budget of seconds, with the speed of
    each size given by speed_of((layers, hidden)) and per_step tokens a step; and the sizes it measured,
    in order."""
    measured, options = [], dict(OPTIONS, layers=None, hidden=None)

    def measure(candidate):
        measured.append((candidate["layers"], candidate["hidden"]))
        return speed_of(measured[-1])
    tconfig = TrainConfig(max_time=seconds, batch_size=16, seq_len=100, **train)
    budget_size(n_tokens, per_step, tconfig, options, measure, vocab)
    return (options["layers"], options["hidden"]), measured


def params(size, vocab=68):
    return count_params(dict(OPTIONS, layers=size[0], hidden=size[1]), vocab)


def flops_speed(tokens_per_sec_per_param):
    """A machine whose speed is inversely proportional to the parameters (training costs ~6 FLOPs each)."""
    return lambda size: tokens_per_sec_per_param / params(size)


def sweep_points():
    """{(corpus, mode, minutes): {(layers, hidden): (best val loss, tokens/s, training tokens, tokens a step)}}:
    each size run with the automatic batch and dropout, given or chosen by the defaults (runs of one size
    averaged)."""
    runs = defaultdict(lambda: defaultdict(list))
    with open(SWEEP, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            s = r["settings"]
            # the sweep ran batch 16 in float32 (the defaults then); its own choices of batch, dropout or
            # precision ("/" in the size) and the later defaults' runs (batch 32, bf16) are not its points
            if "/" not in r["size"] and s["batch_size"] == 16 and s.get("precision") in (None, "float32"):
                runs[r["corpus"], r["mode"], r["minutes"]][s["layers"], s["hidden"]].append(
                    (r["best_val_loss"], r["tokens_per_sec"], r["n_tokens"], r["passes"] * r["n_tokens"] / r["steps"]))
    return {key: {size: tuple(sum(v) / len(v) for v in zip(*found)) for size, found in sizes.items()}
            for key, sizes in runs.items()}


@pytest.mark.parametrize("key", sorted(sweep_points()), ids=lambda k: f"{k[0]}-{k[2]:g}min")
def test_the_rule_picks_a_best_size_of_the_sweep(key):
    runs = sweep_points()[key]
    best = min(loss for loss, *_ in runs.values())
    n_tokens, per_step = next(iter(runs.values()))[2:]
    speeds = {size: speed for size, (_, speed, *_) in runs.items()}
    # sizes the sweep did not run are slower or faster in proportion to their parameters (measured ones anchor it)
    anchor = min(speeds)
    per_param = speeds[anchor] * params(anchor)
    chosen, _ = choose(n_tokens, key[2] * 60, lambda size: speeds.get(size, per_param / params(size)),
                       per_step=per_step)
    assert chosen in runs, f"the rule picks {chosen}, which the sweep did not run for {key}"
    assert runs[chosen][0] <= best + SWEEP_SLACK, (chosen, runs)


def test_more_time_or_a_faster_machine_never_buys_a_smaller_model():
    machine = flops_speed(23_000 * params((2, 256)))  # this repository's 2-core reference, about
    for n_tokens in (3_000, 250_000, 1_000_000, 30_000_000):
        sizes = [choose(n_tokens, minutes * 60, machine)[0] for minutes in (0.5, 2, 5, 10, 30, 120)]
        assert sizes == sorted(sizes, key=AUTO_SIZES.index), (n_tokens, sizes)
        slow = [choose(n_tokens, minutes * 60, lambda s: machine(s) / 2)[0] for minutes in (2, 10, 30)]
        fast = [choose(n_tokens, minutes * 60, machine)[0] for minutes in (2, 10, 30)]
        assert all(AUTO_SIZES.index(a) <= AUTO_SIZES.index(b) for a, b in zip(slow, fast)), (n_tokens, slow, fast)
    # the machine twice as slow gets a smaller model, not the same one trained half as long
    assert choose(1_000_000, 600, lambda s: machine(s) / 2)[0] < choose(1_000_000, 600, machine)[0]


def test_the_size_follows_the_tokens_per_parameter_and_the_data():
    machine = flops_speed(23_000 * params((2, 256)))
    for n_tokens in (2_000, 250_000, 1_000_000, 30_000_000):
        for seconds in (10, 120, 600, 1800):
            chosen, measured = choose(n_tokens, seconds, machine)
            allowed = [s for s in AUTO_SIZES if params(s) <= config.PARAMS_PER_TOKEN * n_tokens] or [AUTO_SIZES[0]]
            fitting = [s for s in allowed if machine(s) * seconds >= max(config.TOKENS_PER_PARAM * params(s),
                                                                         config.MIN_STEPS * 1600)]
            assert chosen == (fitting[-1] if fitting else allowed[0]), (n_tokens, seconds)
            # largest allowed first, and nothing measured after the one chosen
            assert measured == allowed[::-1][:len(measured)] and measured[-1] == chosen


def test_a_step_or_pass_limit_bounds_the_size_as_time_does():
    machine = flops_speed(23_000 * params((2, 256)))

    def expected(limit_tokens):
        fitting = [s for s in AUTO_SIZES if min(machine(s) * 1800, limit_tokens) >= max(
            config.TOKENS_PER_PARAM * params(s), config.MIN_STEPS * 1600)]
        return fitting[-1] if fitting else AUTO_SIZES[0]
    unlimited, _ = choose(10_000_000, 1800, machine)
    assert unlimited == expected(float("inf")) == AUTO_SIZES[-1]
    for steps in (500, 1_500, 3_000):
        assert choose(10_000_000, 1800, machine, max_steps=steps)[0] == expected(steps * 1600)
    for passes in (0.1, 0.3, 1.0):
        assert choose(10_000_000, 1800, machine, max_epochs=passes)[0] == expected(passes * 10_000_000)
    assert choose(10_000_000, 1800, machine, max_steps=500)[0] == AUTO_SIZES[0]  # too few steps for any


def test_a_given_size_is_kept_and_only_measured(tmp_path):
    calls = []

    def measure(options, tconfig):
        calls.append((options["layers"], options["hidden"]))
        return 10_000.0
    text = "abcdefgh " * 30_000
    for given in ({"hidden": 96}, {"layers": 3}):
        calls.clear()
        options = {"cell": "lstm", "layers": None, "hidden": None, "embed": None, "dropout": None, **given}
        fill_auto_settings(text, None, TrainConfig(max_time=600.0, batch_size=None, seq_len=None), options,
                           measure=measure, vocab_size=12)
        assert len(calls) == 1 and {k: options[k] for k in given} == given
    calls.clear()
    options = {"cell": "lstm", "layers": None, "hidden": None, "embed": None, "dropout": None}
    fill_auto_settings(text, None, TrainConfig(max_time=600.0, batch_size=None, seq_len=None), options,
                       measure=measure, vocab_size=12)
    assert calls and (options["layers"], options["hidden"]) == calls[-1]
