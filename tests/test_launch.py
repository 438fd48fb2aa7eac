"""`omnisched launch / status / logs / stop` against a real Ray head on loopback (Ray Jobs API)."""

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import free_port
from typer.testing import CliRunner

from omnisched.cli import app
from omnisched.errors import ConfigError
from omnisched.orchestration import jobs

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes/tiny.yaml"


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _kill_leftovers(marker: str) -> None:
    """SIGKILL processes whose command line names this head's own temp dir (and nothing else)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with the dashboard (Jobs API) on free loopback ports and its own temp dir."""
    yield from _head([str(Path(sys.executable).with_name("ray"))])


def _head(ray: list[str]):
    """Start `ray start --head` (the command `ray`) on free loopback ports; yield its address."""
    temp = tempfile.mkdtemp(prefix="omr-")  # short: Ray's socket paths must stay < 108 chars
    ports = {
        "port": free_port(),
        "dashboard-port": free_port(),
        "ray-client-server-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "metrics-export-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
    }
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    env["PATH"] = f"{Path(ray[0]).parent}{os.pathsep}{env.get('PATH', '')}"  # its python first
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"  # a token may exist in ~/.ray; this head stays open
    cmd = [
        *ray,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=4",
        f"--temp-dir={temp}",
        *(f"--{k}={v}" for k, v in ports.items()),
    ]
    log = open(Path(temp) / "ray-start.log", "wb")  # noqa: SIM115 - closed in teardown
    head = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        _wait_for_jobs_api(address, head, Path(temp) / "ray-start.log")
        yield address
    finally:
        # `ray start --block` does not exit on SIGTERM within 20 s (measured): this head is the
        # test's own, in its own session and temp dir, so it is killed outright
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
        _kill_leftovers(temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_jobs_api(address: str, head: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{address}/api/jobs/", timeout=2).status_code == 200:
                client = jobs.connect(address)
                # the job agent comes up after the dashboard: a trivial job proves it answers
                for _ in range(20):
                    try:
                        job = jobs.submit(client, jobs.JobSpec(entrypoint="echo ready"))
                        break
                    except jobs.ClusterError:
                        time.sleep(1)
                assert jobs.wait(client, job, timeout_s=60) == "SUCCEEDED"
                return
        time.sleep(0.5)
    pytest.fail(f"no Jobs API at {address} after 60 s:\n{log.read_text()[-3000:]}")


def test_launch_trains_a_tiny_run_on_the_cluster(ray_head, tmp_path):
    small = [
        "model.warm_start.enabled=false",
        "schedule.phases=1",
        "schedule.steps_per_phase=1",
        "schedule.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "eval.samples=1",
        *(f"domains.{i}.eval_size=2" for i in range(4)),
        f"run.output_dir={tmp_path}",  # the "cluster" is this machine: the run dir is visible
    ]
    result = _cli("launch", str(TINY), *small, "--address", ray_head)  # follows by default
    assert result.exit_code == 0, result.output
    job_id = result.stdout.splitlines()[0]
    assert f"job {job_id}: SUCCEEDED" in result.stderr
    (run_dir,) = tmp_path.iterdir()
    assert str(run_dir) in result.stdout  # the streamed logs end with the run's own output
    assert (run_dir / "report.md").is_file()
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["ray"]["address"] == "auto"  # the driver joined the job's cluster
    assert recipe["rollout"]["group_size"] == 2

    status = _cli("status", job_id, "--address", ray_head)
    assert status.exit_code == 0 and status.stdout.strip() == f"{job_id}: SUCCEEDED"
    logs = _cli("logs", job_id, "--address", ray_head)
    assert logs.exit_code == 0 and str(run_dir) in logs.stdout


def test_launch_uploads_a_recipe_from_outside_the_project(ray_head, tmp_path):
    outside = tmp_path / "mine.yaml"
    shutil.copy(TINY, outside)
    result = _cli(
        "launch",
        str(outside),
        "run.name=outside",
        "--address",
        ray_head,
        "--dry-run",
        "--no-follow",
    )
    assert result.exit_code == 0, result.output
    (job_id,) = result.stdout.split()
    client = jobs.connect(ray_head)
    assert jobs.wait(client, job_id, timeout_s=60) == "SUCCEEDED"
    # Ray's job lines, then the dry run's two YAML documents: the config and the placement
    logs = jobs.job_logs(client, job_id)
    config, plan = list(yaml.safe_load_all(logs[logs.index("\nrun:\n") + 1 :]))
    assert config["run"]["name"] == "outside"
    assert config["ray"]["address"] == "auto"
    assert plan["placement_plan"]["totals"] == {"CPU": 2.5, "GPU": 0.0}


def test_stop_a_long_job(ray_head):
    client = jobs.connect(ray_head)
    job_id = jobs.submit(client, jobs.JobSpec(entrypoint="python -c 'import time; time.sleep(60)'"))
    deadline = time.monotonic() + 30
    while jobs.job_status(client, job_id) != "RUNNING":
        assert time.monotonic() < deadline, "the sleeping job never started"
        time.sleep(0.3)
    t0 = time.monotonic()
    result = _cli("stop", job_id, "--address", ray_head)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{job_id}: STOPPED"
    assert time.monotonic() - t0 < 30  # stopped, not waited out
    assert jobs.job_status(client, job_id) == "STOPPED"


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_unknown_job_id_is_one_clear_line(ray_head, command):
    result = _cli(command, "raysubmit_nosuchjob", "--address", ray_head)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no job 'raysubmit_nosuchjob' on {ray_head}"
    ]


def test_unreachable_cluster_is_one_clear_line():
    address = f"http://127.0.0.1:{free_port()}"
    result = _cli("launch", str(TINY), "--address", address)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the Ray Jobs API at {address}")
    assert "Traceback" not in result.output


def test_bad_recipe_fails_before_any_cluster_is_contacted():
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: reaching it would fail
    result = _cli("launch", str(TINY), "learner.lrr=1", "--address", address)
    assert result.exit_code == 2
    assert "learner.lrr: unknown field" in result.stderr
    assert "cannot reach" not in result.stderr


def test_build_job_entrypoint_and_runtime_env(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# extra\nvllm==0.32.0\n\nsympy>=1.14  # math\n")
    spec = jobs.build_job(
        TINY,
        ["learner.lr=1e-5"],
        env_vars=jobs.parse_env(["HF_HOME=/cache/hf", "A=b=c"]),
        pip=[str(reqs), "rich"],
    )
    assert spec.entrypoint == (
        "python -m omnisched.cli run recipes/tiny.yaml learner.lr=1e-5 ray.address=auto --quiet"
    )
    env = spec.runtime_env
    assert env["working_dir"] == str(ROOT)
    assert {".venv", "runs", ".git", "__pycache__"} <= set(env["excludes"])
    assert env["env_vars"]["HF_HOME"] == "/cache/hf" and env["env_vars"]["A"] == "b=c"
    assert env["pip"] == ["vllm==0.32.0", "sympy>=1.14", "rich"]
    assert "typer>=0.29" in spec.requirements and "torch" in spec.requirements
    with pytest.raises(ConfigError, match=r"^launch: ray\.enabled: false would run every worker"):
        jobs.build_job(TINY, ["ray.enabled=false"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        jobs.parse_env(["NOVALUE"])


def test_cluster_that_wants_a_token_is_one_clear_line():
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Unauthorized: Missing authentication token")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = _cli("status", "raysubmit_x", "--address", address)
    finally:
        server.shutdown()
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "RAY_AUTH_MODE=token" in line


def test_build_job_sends_recipes_the_upload_will_not_hold(tmp_path):
    kept = tmp_path / "runs" / "old" / "recipe.yaml"  # runs/ is excluded from the upload
    kept.parent.mkdir(parents=True)
    shutil.copy(TINY, kept)
    spec = jobs.build_job(kept, ["run.seed=7"], working_dir=tmp_path)
    assert spec.entrypoint.endswith(
        "python -m omnisched.cli run .omnisched-launch.yaml ray.address=auto --quiet"
    )
    sent = yaml.safe_load(spec.runtime_env["env_vars"][jobs.RECIPE_ENV])
    assert sent["run"]["seed"] == 7  # overrides are applied before sending


@pytest.fixture(scope="module")
def head_without_typer(tmp_path_factory):
    """A Ray head on another interpreter, as a new user's cluster may run: a venv that sees every
    package of this one but typer (its .pth names a folder of links to the others)."""
    import site

    root = tmp_path_factory.mktemp("py")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    farm = root / "farm"
    farm.mkdir()
    source = Path(site.getsitepackages()[0])
    for entry in source.iterdir():
        if not entry.name.startswith(("typer", "__editable__", "omnisched", "__pycache__")):
            (farm / entry.name).symlink_to(entry)
    (site_dir,) = (root / "venv/lib").glob("python3*/site-packages")
    (site_dir / "farm.pth").write_text(f"{farm}\n")
    python = str(root / "venv/bin/python")
    no_typer = subprocess.run([python, "-c", "import typer"], capture_output=True, text=True)
    assert "No module named 'typer'" in no_typer.stderr
    yield from _head([python, "-m", "ray.scripts.scripts"])


def test_launch_installs_what_the_clusters_python_lacks(head_without_typer):
    client = jobs.connect(head_without_typer)
    bare = jobs.submit(client, jobs.JobSpec(entrypoint="python -c 'import typer'"))
    assert jobs.wait(client, bare, timeout_s=120) == "FAILED"
    assert "No module named 'typer'" in jobs.job_logs(client, bare)

    result = _cli("launch", str(TINY), "--address", head_without_typer, "--dry-run")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.splitlines()[0]
    assert f"job {job_id}: SUCCEEDED" in result.stderr
    info = client.get_job_info(job_id)
    assert info.runtime_env["pip"]["packages"] == ["typer>=0.29"]  # exactly what was missing
