"""A rank stuck in one phase prints where it and its data workers wait (corefm/train/stall.py)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import multiprocessing, time
    from corefm.train.stall import StallReport, dump_stacks_on_signal

    def data_worker_waits():
        time.sleep(60)

    def rank_waits_for_its_batch():
        time.sleep(4)

    if __name__ == "__main__":
        dump_stacks_on_signal()
        worker = multiprocessing.get_context("fork").Process(target=data_worker_waits)
        worker.start()
        report = StallReport(1.0, rank=3)
        report.enter("training step 7")
        rank_waits_for_its_batch()
        report.close()
        worker.kill()
""")


def test_a_stuck_phase_prints_the_rank_and_its_workers_stacks(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    warning = [line for line in lines if line.startswith("corefm: warning: rank 3 has been in training step 7 for 1 s")]
    assert len(warning) == 1, r.stderr  # once per stalled phase, not once a second
    assert "then its data workers' (pids" in warning[0]
    assert "rank_waits_for_its_batch" in r.stderr  # the rank's own stack
    assert "data_worker_waits" in r.stderr  # the forked worker answered SIGUSR2 with its stack


def test_a_phase_that_ends_in_time_prints_nothing(tmp_path):
    script = tmp_path / "fine.py"
    script.write_text(textwrap.dedent("""
        import time
        from corefm.train.stall import StallReport
        report = StallReport(1.0, rank=0)
        for step in range(8):
            report.enter(f"training step {step}")
            time.sleep(0.3)
        report.close()
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "corefm: warning" not in r.stderr, r.stderr
