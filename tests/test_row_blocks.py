"""The default row-block count (--threads) follows the batch: blocks of at least 16 rows, at most two
(issue 24: at batch 16 one block trained faster than two, at 32 two faster than one). It is saved with the
run's settings."""

import pytest

from charrnn.files import checkpoint
from charrnn.files.config import auto_threads
from tiny_runs import TINY, invoke, stream_text, without


@pytest.mark.parametrize("batch,ranks,blocks", [(1, 1, 1), (16, 1, 1), (31, 1, 1), (32, 1, 2), (64, 1, 2),
                                                (1024, 1, 2), (32, 2, 1), (63, 2, 1), (64, 2, 2)])
def test_blocks_of_at_least_16_rows_at_most_two(batch, ranks, blocks):
    assert auto_threads(batch, ranks) == blocks


@pytest.mark.parametrize("extra,saved", [(["--batch-size", "16"], 1), (["--batch-size", "32"], 2),
                                         (["--batch-size", "16", "--threads", "3"], 3)])
def test_a_fresh_run_saves_the_blocks_it_trained_with(tmp_path, extra, saved):
    out = tmp_path / "run"
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text(stream_text(400))
    args = [*without(TINY, "--batch-size"), "--max-steps", "1", "--eval-every", "1", "--eval-tokens", "50", "-q"]
    result = invoke(["train", corpus_file, "--out", out, *args, *extra])
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load_state(out)[1]["train"]["threads"] == saved
