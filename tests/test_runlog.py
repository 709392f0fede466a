"""runs/runlog.py: a run's log.jsonl, its format written and read back in one module.

The references: the records written out by hand (their keys in order, as the log's bytes have them since
the first version), the file's own length, and json.loads of each line.
"""

import json
import math

from charrnn.runs import runlog

STEP = {"event": "step", "step": 7, "epoch": 0.5, "loss": 2.5, "lr": 0.1, "grad_norm": 1.25,
        "chars_per_sec": 1000.0, "elapsed": 3.0}
SKIP = {"event": "skip", "step": 8, "epoch": 0.55, "lr": 0.1, "skipped": 2, "elapsed": 3.5}


def test_a_step_record_is_the_event_with_the_mean_loss_and_the_validation_loss():
    record = runlog.step_record(STEP, 2.25, 1.75)
    assert json.dumps(record) == ('{"step": 7, "epoch": 0.5, "loss": 2.25, "lr": 0.1, "grad_norm": 1.25, '
                                  '"chars_per_sec": 1000.0, "elapsed": 3.0, "val_loss": 1.75}')
    assert "val_loss" not in runlog.step_record(STEP, 2.25)
    assert STEP["loss"] == 2.5  # the event is left as it was


def test_a_skip_record_counts_the_steps_skipped():
    assert json.dumps(runlog.step_record(SKIP)) == \
        '{"step": 8, "epoch": 0.55, "lr": 0.1, "elapsed": 3.5, "skipped_nonfinite": 2}'


def test_what_is_appended_reads_back_and_a_resume_cuts_what_followed_the_save(tmp_path):
    path = tmp_path / "log.jsonl"
    records = [runlog.step_record({**STEP, "step": k}, 2.0 + k, 1.5 if k == 2 else None) for k in (1, 2, 3)]
    lengths = [runlog.append_log(path, r, sync=k == 1) for k, r in enumerate(records)]
    assert lengths[-1] == path.stat().st_size
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert runlog.read_log(path) == records
    assert runlog.charrnn_log(path)
    runlog.cut_log(path, lengths[1])  # saved after the second line: the third goes
    assert runlog.read_log(path) == records[:2]
    runlog.cut_log(path, 0)  # 0: nothing saved counts the log; nothing is cut
    assert runlog.read_log(path) == records[:2]
    path.write_text(path.read_text() + '{"not": "a record"}\n')
    assert not runlog.charrnn_log(path)


def test_losses_are_the_finite_curves_of_the_records():
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": math.inf}, {"step": 2, "loss": 2.0, "val_loss": 2.5},
               {"step": 3, "skipped_nonfinite": 1}, {"step": 4, "loss": True, "val_loss": "x"}]
    assert runlog.losses(records) == ([(1, 3.0), (2, 2.0)], [(2, 2.5)])
