"""The embedded default's secret key, created by several real processes at once."""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from notifier.config import Settings
from notifier.errors import ConfigError

PROCESSES = 6
ROUNDS = 40


def _read_keys(dirs: list[str], barrier: Barrier, results: Any) -> None:
    """In a fresh process: for each data dir, start together with the others, then read its key."""
    keys: list[str] = []
    for folder in dirs:
        barrier.wait(timeout=60)
        try:
            keys.append(Settings.from_env({"NOTIFIER_DATA_DIR": folder}).secret_key().decode())
        except Exception:  # the crash itself is what the test reports
            keys.append("CRASH " + traceback.format_exc())
    results.put(keys)


def test_processes_starting_together_on_a_fresh_data_dir_all_read_the_same_whole_key(tmp_path: Path) -> None:
    dirs = [str(tmp_path / f"var{i}") for i in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [context.Process(target=_read_keys, args=(dirs, barrier, results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    per_process = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    crashes = [key for keys in per_process for key in keys if key.startswith("CRASH")]
    assert crashes == [], crashes[0] if crashes else ""
    for i, folder in enumerate(dirs):
        seen = {keys[i] for keys in per_process}
        on_disk = (Path(folder) / "secret.key").read_text().strip()
        assert seen == {on_disk} and len(on_disk) >= 32, f"{folder}: every process reads the one whole key"
        assert list(Path(folder).iterdir()) == [Path(folder) / "secret.key"], "no temporary file is left"


def test_an_empty_secret_key_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("")

    with pytest.raises(ConfigError, match=str(tmp_path / "secret.key")):
        Settings.from_env({"NOTIFIER_DATA_DIR": str(tmp_path)}).secret_key()
