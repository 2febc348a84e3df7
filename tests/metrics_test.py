"""lctx.metrics: step times that are each step's own, rewinding after a resume, TensorBoard."""
import glob
import json
import time

from lctx import metrics


def test_step_timer_times_each_step_and_skips_the_first():
    t = metrics.StepTimer()
    t.dispatched(5)
    time.sleep(0.02)
    assert t.finished(5) is None  # the first step of a process is not in the series
    t.dispatched(6)
    t.dispatched(7)  # dispatched before 6 finished: 7's time starts when 6 is seen done
    time.sleep(0.02)
    d6 = t.finished(6)
    time.sleep(0.05)
    d7 = t.finished(7)
    assert 0.015 < d6 < 0.2 and 0.045 < d7 < 0.2 and d6 != d7
    t.pause()  # a checkpoint save between steps is nobody's step time
    time.sleep(0.1)
    t.dispatched(8)
    time.sleep(0.01)
    assert t.finished(8) < 0.08


def test_rewind_drops_the_steps_to_redo_and_cut_lines(tmp_path):
    w = metrics.MetricWriter(str(tmp_path), every=1, peak_tflops=1.0, progress=False)
    lines = [{"stage": "s1", "step": i, "train/loss": 1.0} for i in range(6)]
    lines += [{"stage": "s1", "step": 5, "eval/loss": 2.0}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"stage": "s1", "st'
    (tmp_path / "metrics.jsonl").write_text(text)
    w.start_stage("s1", 4, 10, resumed=True)
    w.write_train("s1", 4, {"train/loss": 0.5, "train/grad_norm": 1.0}, 100, 0.5, 10.0)
    w.end_stage("s1")
    got = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in got] == [(0, 1.0), (1, 1.0), (2, 1.0),
                                                            (3, 1.0), (4, 0.5)]
    assert got[-1]["perf/tokens_per_s"] == 200.0 and got[-1]["perf/step_time_s"] == 0.5
    events = glob.glob(str(tmp_path / "tb" / "s1" / "events.out.tfevents.*"))
    assert len(events) == 1 and open(events[0], "rb").read().count(b"train/loss") == 1
