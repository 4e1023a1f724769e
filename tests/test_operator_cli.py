"""What a technician sees from `config check`, `run` and the example settings: real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "hw-sim"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "terminal.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def test_a_settings_file_nested_5000_deep_is_one_line_and_exit_2(tmp_path: Path) -> None:
    file = tmp_path / "terminal.toml"
    file.write_text("[canteen]\nunits = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    for args in (("config", "check", str(file)), ("run", "--config", str(file))):
        result = run(*args)
        assert result.returncode == 2, result.stderr[-500:]
        assert result.stderr.count("\n") == 1, result.stderr[-500:]
        assert "nested too deep" in result.stderr and str(file) in result.stderr
        assert "Traceback" not in result.stderr
