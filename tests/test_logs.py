"""A user's console: by default only faceseg's own lines (what it does, the epoch table, the summary), none of
TensorFlow's C++ logging, CUDA probing, absl, Ray Data's progress bars or deprecation warnings; --verbose shows
everything. The training console is trained_run's (conftest.py): `faceseg train` in a user's shell, its own Ray
runtime and workers."""
import re

import pytest

from conftest import train_console

pytestmark = pytest.mark.usefixtures("ray_runtime")

RAY_PREFIX = re.compile(r"^\x1b\[\d+m\((?P<actor>[\w.:-]+) pid=\d+(?:, ip=[\d.]+)?\)\x1b\[0m |^\((?P<plain>[\w.:-]+) pid=\d+(?:, ip=[\d.]+)?\) ")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
OURS = re.compile(r"^(Ray: |training |train split: |train\.repeat: |the cluster has |resumed from |trained \d+ epochs|"
                  r"run: |model: |metrics: |logs: |\s+epoch\s+loss\s+val_loss|\s+\d+\s+-?\d+\.\d{4}\s)")


def foreign_lines(log: str) -> list[str]:
    lines = []
    for raw in log.splitlines():
        line = ANSI.sub("", RAY_PREFIX.sub("", raw)).rstrip()
        if line.strip() and not OURS.match(line):
            lines.append(raw)
    return lines


def test_a_users_console_shows_faceseg_s_lines_only_and_the_table_once(trained_run):
    log = train_console(trained_run)             # `faceseg train`, 2 workers, 4 epochs, in a user's shell
    assert foreign_lines(log) == [], "\n".join(foreign_lines(log))
    assert len(re.findall(r"epoch\s+loss\s+val_loss", log)) == 1, log[-4000:]
    rows = re.findall(r"RayTrainWorker pid=\d+\)\S*\s+(\d+)\s+-?\d+\.\d{4}\s", log)
    assert rows == ["1", "2", "3", "4"], log[-4000:]


QUIET_IMPORT = "import faceseg.backend; print(faceseg.backend.tf.constant(2) * 3)"


def test_tensorflow_loads_quietly_unless_verbose():
    import subprocess
    import sys

    from support import cli_env

    quiet = subprocess.run([sys.executable, "-c", QUIET_IMPORT], env=cli_env(), capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 0 and "tf.Tensor(6" in quiet.stdout and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-c", QUIET_IMPORT], env=cli_env(FACESEG_VERBOSE="1"),
                          capture_output=True, text=True, timeout=120)
    assert "cuda" in loud.stderr.lower() or "oneDNN" in loud.stderr, loud.stderr
