"""The cluster recipes validate against the schemas of the tools that read them, and every faceseg command
in them and in the READMEs is a valid command line."""
import json
import re
import shlex
from pathlib import Path

import jsonschema
import yaml

from faceseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(__file__).resolve().parent / "schemas"


def _parses_as_faceseg_command(command: str) -> None:
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "faceseg"] or words[:1] == ["faceseg"], command
    build_parser().parse_args(words[3:] if words[0] == "python" else words[1:])   # exits (fails) on a bad flag


def test_cluster_launcher_config_matches_rays_schema():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cluster = yaml.safe_load((ROOT / "cluster" / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert ".gitignore" in cluster["rsync_filter"]           # .venv/, data and runs stay home
    assert any("pip install" in c and "faceseg" in c for c in cluster["setup_commands"])
    assert (ROOT / cluster["file_mounts"]["/home/ubuntu/faceseg"] / "pyproject.toml").is_file()


def test_rayjob_matches_the_kuberay_crd_and_runs_faceseg_on_object_storage():
    schema = json.loads((SCHEMAS / "rayjob-v1-openapi.json").read_text())
    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    jsonschema.validate(job, schema)
    spec = job["spec"]
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    _parses_as_faceseg_command(spec["entrypoint"])
    assert "s3://" in spec["entrypoint"] and "--output s3://" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token" and cluster["enableInTreeAutoscaling"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "pip" not in env and "TF_USE_LEGACY_KERAS" not in env.get("env_vars", {})


def test_runtime_env_ships_the_tree_without_a_pip_step_or_clashing_variables():
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert "pip" not in env                 # Ray runs pip from an empty folder: `-e .` cannot work there
    assert ".venv/" in env["excludes"]
    from faceseg import runtime

    # faceseg passes env vars through ray.init only for a runtime it starts itself, never in a job
    source = Path(runtime.__file__).read_text()
    join = source[source.index("def _join"):source.index("def can_add_nodes")]
    assert "runtime_env" not in join


def test_dockerfile_starts_from_a_ray_gpu_image_of_the_pinned_version():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    pinned = re.search(r'"ray\[[^\]]*\]>=([\d.]+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(pinned)}\.0-py3\d+-gpu", base), base
    assert 'pip install --no-cache-dir ".[gpu' in dockerfile


def test_serve_config_names_the_builder():
    config = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    assert config["applications"][0]["import_path"] == "faceseg.serve.app:build_app"


def test_every_faceseg_command_in_the_docs_parses():
    commands = []
    for doc in [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                ROOT / "cluster" / "cluster.yaml", ROOT / "cluster" / "serve.yaml", *sorted((ROOT / "configs").glob("*.yaml")),
                *sorted((ROOT / "tune_configs").glob("*.yaml"))]:
        text = doc.read_text().replace("\\\n", " ")
        fenced = doc.suffix != ".md"           # YAML files: their comments are commands to copy
        for line in text.splitlines():
            if line.strip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                continue
            for match in re.finditer(r"(python -m faceseg|(?<![\w/.-])faceseg) (synth|prepare|train|predict|evaluate|"
                                     r"tune|serve|export|demo)\b", line):
                before = line[:match.start()].strip().lstrip("#").strip()
                if before and not before.endswith(("--", "&&", "$")):        # prose naming a command
                    continue
                command = line[match.start():].split(" && ")[0].split(" | ")[0].split("  #")[0].strip()
                if "..." in command or "<" in command or "[" in command:   # a synopsis, not a command
                    continue
                commands.append(command)
    assert len(commands) > 10
    for command in commands:
        _parses_as_faceseg_command(command)
