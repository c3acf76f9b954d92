"""`make loadtest` end to end, briefly: every scenario runs, the reports are written, the SLO verdict is
the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import REPO

pytestmark = pytest.mark.e2e


def run(tmp_path: Path, **env: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "loadtests.run_loadtest"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "LOADTEST_DURATION": "8s", "LOADTEST_USERS": "8",
                                                       "LOADTEST_DATA_DIR": str(tmp_path / "var"),
                                                       "LOADTEST_REPORTS": str(tmp_path / "reports"), **env})
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_scenarios_run_and_the_slos_decide_the_exit_code(tmp_path: Path) -> None:
    code, summary = run(tmp_path)
    assert code == 0, summary
    assert summary["requests"] > 100 and summary["failures"] == 0 and summary["slo_missed"] == []
    assert (tmp_path / "reports" / "jamu.html").stat().st_size > 0
    assert (tmp_path / "reports" / "jamu_stats.csv").read_text().count("/v1/") >= 5
    strict, verdict = run(tmp_path, LOADTEST_MAX_P99_MS="0.001")
    assert strict == 1 and verdict["slo_missed"] == ["p99"]
