"""The cluster manifests parse and name entry points and files that exist."""
import shlex
from pathlib import Path

import yaml

from faceseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _parses_as_faceseg_command(command: str) -> None:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "faceseg"], command
    build_parser().parse_args(words[3:])   # exits (fails the test) on an unknown sub-command or flag


def test_rayjob_entrypoint_is_a_valid_faceseg_command():
    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    _parses_as_faceseg_command(job["spec"]["entrypoint"])
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"


def test_cluster_launcher_installs_the_project():
    cluster = yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert any("pip install" in c and "faceseg" in c for c in cluster["setup_commands"])
    assert (ROOT / cluster["file_mounts"]["/home/ubuntu/faceseg"] / "pyproject.toml").is_file()


def test_runtime_env_and_readme_commands():
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert env["env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
    readme = (ROOT / "cluster" / "README.md").read_text()
    commands = [line.split(" -- ", 1)[1] if " -- " in line else line
                for line in readme.replace("\\\n", " ").splitlines() if "python -m faceseg" in line]
    assert commands
    for command in commands:
        _parses_as_faceseg_command(command[command.index("python -m faceseg"):].replace("...", "").strip())
