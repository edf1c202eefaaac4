"""The cluster path as a user runs it, on one machine: `ray up` -> `ray job submit` a sweep into S3 -> lose
a node mid-sweep -> `ccr analyze` the bucket -> `ray down`.

    python scripts/cluster_check.py                                  # sweeps/default.yaml on data in the bucket
    python scripts/cluster_check.py --data generated                 # on the embedded default instead
    python scripts/cluster_check.py --set train.epochs=2             # a shorter sweep

It installs ccr's `cluster` extra (ray[default]: the dashboard and job API) and openssh-server and
rsync if they are missing (Debian/Ubuntu, as root), authorises a key of its own
(~/.ssh/ccr_cluster_key) for root, and starts sshd on 127.0.0.3 and 127.0.0.2 (port 22) unless one
already answers there with that key. It starts an S3-compatible server (moto) on 127.0.0.1:9000 with a
bucket `ccr`, makes a Ray token (`ray get-auth-token --generate`), brings up scripts/cluster-local.yaml
(Ray's `local` provider: head 127.0.0.3, worker 127.0.0.2, over SSH), submits the sweep through the
token-protected job API with `ray job submit` (by default on a Karpathy-layout dataset of 640x480 JPEGs and
a tiny CLIP folder that exist only in the bucket: the local copies are deleted before the job starts, and each
node stages what it reads into its own cache), loses the worker node (every process of it kill -9'd, its
disk deleted) while a trial on it has checkpointed a task to the bucket and has one still to learn (the node is
frozen first, so that however short the trials none can finish in between), waits for the job, runs
`ccr analyze` on the bucket, checks that every trial finished and that the interrupted one resumed from the
bucket, and takes everything down again, in bounded time, whatever failed (scripts/cluster_teardown.py). Exit
code 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLUSTER_TEMPLATE = REPO / "scripts" / "cluster-local.yaml"
KEY = Path.home() / ".ssh" / "ccr_cluster_key"
PYTHON = shlex.quote(sys.executable)  # the interpreter running this check, for ccr itself
S3_PORT = 9000
HOSTS = ("127.0.0.3", "127.0.0.2")  # head, worker (see cluster-local.yaml)
sys.path.insert(0, str(REPO))
from cluster_teardown import RAY, WORK, cluster_processes, log, signal_all, teardown  # noqa: E402  (a sibling)


def sh(cmd: str, check: bool = True, env: dict | None = None, timeout: float | None = None,
       quiet: bool = False) -> subprocess.CompletedProcess:
    if not quiet:
        log(f"$ {cmd}")
    r = subprocess.run(cmd, shell=True, text=True, capture_output=True, env=env, timeout=timeout, cwd=REPO)
    if not quiet or r.returncode:
        out = (r.stdout + r.stderr).strip()
        if out:
            print("\n".join("    " + ln for ln in out.splitlines()[-25:]), flush=True)
    if check and r.returncode:
        raise SystemExit(f"cluster check: command failed ({r.returncode}): {cmd}")
    return r


def ssh_ok(host: str) -> bool:
    return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                           "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-i", str(KEY),
                           f"root@{host}", "true"], capture_output=True).returncode == 0


def ensure_ssh() -> subprocess.Popen | None:
    """sshd on both loopback addresses, accepting our key for root; returns the sshd we started."""
    if not KEY.exists():
        KEY.parent.mkdir(mode=0o700, exist_ok=True)
        sh(f"ssh-keygen -q -t ed25519 -N '' -f {KEY}")
    auth = KEY.parent / "authorized_keys"
    pub = (KEY.parent / "ccr_cluster_key.pub").read_text().strip()
    if pub not in (auth.read_text() if auth.exists() else ""):
        with open(auth, "a") as f:
            f.write(pub + "\n")
        auth.chmod(0o600)
    if all(ssh_ok(h) for h in HOSTS) and shutil.which("rsync"):
        log(f"sshd already answers on {', '.join(HOSTS)}")
        return None
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists() or not shutil.which("rsync"):  # `ray up` copies files with rsync over ssh
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync",
           quiet=True)
    WORK.mkdir(parents=True, exist_ok=True)
    host_key = WORK / "ssh_host_ed25519_key"
    if not host_key.exists():
        sh(f"ssh-keygen -q -t ed25519 -N '' -f {host_key}")
    Path("/run/sshd").mkdir(exist_ok=True)
    conf = WORK / "sshd_config"
    conf.write_text("\n".join([*(f"ListenAddress {h}:22" for h in HOSTS), f"HostKey {host_key}",
                               "PermitRootLogin prohibit-password", "PasswordAuthentication no", "UsePAM no",
                               "AuthorizedKeysFile .ssh/authorized_keys", f"PidFile {WORK / 'sshd.pid'}",
                               "MaxStartups 100", "MaxSessions 100", ""]))
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(WORK / "sshd.log", "w"), start_new_session=True)
    for _ in range(50):
        if all(ssh_ok(h) for h in HOSTS):
            log(f"sshd started on {', '.join(HOSTS)} (pid {proc.pid})")
            return proc
        time.sleep(0.2)
    raise SystemExit(f"cluster check: sshd did not come up; see {WORK / 'sshd.log'}")


def start_s3() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.s3server", "--port", str(S3_PORT), "--bucket", "ccr"],
                            cwd=REPO, stdout=open(WORK / "s3.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    for _ in range(100):
        if "s3 server on" in (WORK / "s3.log").read_text():
            log(f"S3 server (moto) on 127.0.0.1:{S3_PORT}, bucket ccr")
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(f"cluster check: the S3 server did not start; see {WORK / 's3.log'}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def alive_nodes(env: dict) -> list[dict]:
    code = ("import json, ray; ray.init(address='127.0.0.3:6379', logging_level='ERROR'); "
            "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress']} for n in ray.nodes() "
            "if n['Alive']]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return []


def cluster_file(dest: Path) -> Path:
    """scripts/cluster-local.yaml with the nodes' commands run by the interpreter (and its environment's
    `ray`) that runs this check: over SSH a login shell finds another python3 on PATH, one without ccr
    and Ray when the README's virtual environment is not activated there."""
    bindir = Path(sys.executable).parent
    ray = shlex.quote(str(bindir / "ray"))

    def command(line: str) -> str:
        if not line.lstrip().startswith("- "):  # comments and keys stay as they are
            return line
        line = line.replace('python3 -c "', f'{shlex.quote(sys.executable)} -c "')
        return re.sub(r"(?<![\w/.-])ray (start|stop)", lambda m: f"{ray} {m.group(1)}", line)

    text = "\n".join(command(ln) for ln in CLUSTER_TEMPLATE.read_text().splitlines()) + "\n"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return dest


def data_in_bucket(uri) -> list[str]:
    """A dataset (Karpathy layout, 4 tasks of 640x480 JPEGs) and a tiny CLIP folder, uploaded to the bucket and
    deleted here: the config overrides that name them by URI."""
    from ccr.io.storage import Storage
    from tests.karpathy_fixture import make_photos, upload_karpathy
    from tests.pretrained_fixture import make_complete

    src = WORK / "src"
    shutil.rmtree(src, ignore_errors=True)
    files = make_photos(src / "photos", per_task=150, test_per_task=30, n_tasks=4)
    clip = make_complete(src / "clip", "clip", image_size=16)
    data, weights = Storage(uri("datasets/photos")), Storage(uri("models/clip-tiny"))
    by_uri = upload_karpathy(files, data)
    weights.upload_dir(clip, "")
    shutil.rmtree(src)  # from here on the data and the weights are in the bucket only
    log(f"dataset ({len(data.files('images'))} JPEGs) and weights uploaded to {data.display()} and "
        f"{weights.display()}; the local copies are deleted")
    return ["data.kind=karpathy", *(f"data.{k}={v}" for k, v in by_uri.items()), "data.image_cache=shared",
            f"model.pretrained={weights.uri}", "train.batch_size=16", "train.epochs=50"]


def staged_inputs(node: str) -> dict[str, int]:
    """What a node of the local cluster staged (from its ccr cache's events), by config key."""
    from ccr.io.staging import events

    staged: dict[str, int] = {}
    for e in events(WORK / node / "cache"):
        if e["event"] == "staged":
            staged[e["what"]] = staged.get(e["what"], 0) + 1
    return staged


def worker_cache_events() -> list[str]:
    """The worker's decoding passes and image-cache downloads (from its ccr cache's events)."""
    from ccr.io.staging import events

    return [e["event"] for e in events(WORK / "worker" / "cache") if e["event"] in ("decoded", "downloaded")]


def bring_up(a: argparse.Namespace, env: dict) -> tuple[Path, str]:
    """Data in the bucket (unless --data generated), a Ray token, the two-node cluster; (its file, worker id)."""
    for node in ("head", "worker"):  # nodes that have never seen the data
        shutil.rmtree(WORK / node / "cache", ignore_errors=True)
    bucket = lambda rel: f"s3://ccr/{rel}?endpoint_override=127.0.0.1:{S3_PORT}&scheme=http"  # noqa: E731
    if a.data == "bucket":
        a.set = [*data_in_bucket(bucket), *a.set]
    sh(f"{RAY} get-auth-token --generate > /dev/null", env=env)
    cluster = cluster_file(WORK / "cluster.yaml")
    sh(f"{RAY} up -y --no-config-cache {cluster}", env=env, timeout=900)
    deadline = time.time() + 300
    while len(nodes := alive_nodes(env)) < 2 and time.time() < deadline:
        time.sleep(5)
    log(f"nodes alive: {nodes}")
    assert len(nodes) == 2, "the worker node did not join"
    assert port_open(8265, "127.0.0.1"), "the job API should listen on 127.0.0.1:8265"
    return cluster, next(n["id"] for n in nodes if n["ip"] == "127.0.0.2")


class Job:
    """The sweep, submitted through the token-protected job API, and its status."""

    def __init__(self, a: argparse.Namespace, uri: str, env: dict, creds: dict):
        self.env, self.id = env, f"ccr-check-{int(time.time())}"
        runtime = {"env_vars": creds, "excludes": [".git", "runs", "*.egg-info"]}
        sets = " ".join(f"--set {shlex.quote(s)}" for s in a.set)
        # the job's shell on the head node has no virtual environment on its PATH: run ccr with the
        # interpreter that runs this check (as the nodes' own commands do), not whatever `ccr` is found there
        sh(f"{RAY} job submit --address http://127.0.0.1:8265 --no-wait --submission-id {self.id} --working-dir . "
           f"--runtime-env-json {shlex.quote(json.dumps(runtime))} -- "
           f"{PYTHON} -m ccr.cli sweep {a.sweep} --out {shlex.quote(uri)} {sets}", env=env)
        self.started, self._last_look = time.time(), 0.0

    def status(self) -> str:
        r = sh(f"{RAY} job status --address http://127.0.0.1:8265 {self.id}", env=self.env, check=False, quiet=True)
        return (r.stdout + r.stderr).lower()

    @staticmethod
    def ended(status: str) -> bool:
        return any(f"' {s}" in status for s in ("succeeded", "failed", "stopped"))

    def running(self) -> bool:  # a job that ended (a wrong entrypoint, say) ends a wait, not its timeout
        if time.time() - self._last_look < 10:
            return True
        self._last_look = time.time()
        return not self.ended(self.status())

    def wait(self, timeout: float) -> str:
        status = ""
        while time.time() - self.started < timeout:
            status = self.status()
            if self.ended(status):
                break
            time.sleep(10)
        return status

    def tail(self, n: int) -> None:
        sh(f"{RAY} job logs --address http://127.0.0.1:8265 {self.id} | tail -n {n}", env=self.env, check=False)


def lose_the_worker(runs, worker_id: str, job: Job, timeout: float) -> tuple[str, dict, list]:
    """Lose the worker node (every process of it killed, its disk deleted) while a trial on it has checkpointed a
    task and has one or more still to learn, so that it must resume elsewhere from the bucket; (the trial, what
    the worker had staged, its cache events).

    However short the trials (train.epochs=2: a few seconds each), there is no race between seeing such a trial
    and losing the node: the node is frozen (SIGSTOP) first and the trial's progress read again while nothing
    moves; a trial that finished just before the freeze lets the node go on, and the next candidate is taken."""
    from tests.trials import checkpointed_trial_on, tasks_left

    deadline = time.time() + timeout
    while time.time() < deadline and job.running():
        victim = checkpointed_trial_on(runs, worker_id, min_left=1)
        node = cluster_processes(WORK / "worker") if victim else []
        if node:
            signal_all(node, signal.SIGSTOP)
            left = tasks_left(runs, victim)
            if left:
                staged, events = staged_inputs("worker"), worker_cache_events()
                signal_all(node, signal.SIGKILL)
                shutil.rmtree(WORK / "worker" / "scratch", ignore_errors=True)  # and its disk is gone with it
                log(f"lost the worker node ({len(node)} processes killed, its raylet among them) while trial "
                    f"{victim} was running on it with {left} task(s) still to learn; deleted its scratch folder")
                return victim, staged, events
            signal_all(node, signal.SIGCONT)  # it finished before the freeze: take the next one
        time.sleep(0.2)
    job.tail(20)
    raise AssertionError("no trial on the worker checkpointed a task with one still to learn before the sweep ended")


def verify(a: argparse.Namespace, uri: str, worker_id: str, victim: str, worker_staged: dict,
           worker_events: list) -> None:
    """Every trial complete, the lost one resumed elsewhere from the bucket, each input staged once per node."""
    from ccr.io.storage import Storage

    runs = Storage(uri).child("runs")
    res = {f.split("/")[0]: runs.read_json(f) for f in runs.files() if f.endswith("/results.json")}
    starts = runs.read_text(f"{victim}/starts.log").splitlines()
    log(f"{len(res)} results in {Storage(uri).display()}; complete: "
        f"{sum(r['status'] == 'complete' for r in res.values())}")
    log(f"interrupted trial {victim}: started {len(starts)} times (trial id, node): {starts}; "
        f"resumed after task(s) {res[victim]['resumes']}")
    assert res and all(r["status"] == "complete" for r in res.values())
    assert len(starts) >= 2 and res[victim]["resumes"], "the interrupted trial did not resume from the bucket"
    assert starts[0].split()[1] == worker_id and starts[-1].split()[1] != worker_id
    if a.data == "bucket":  # each node staged each input once, from the bucket, into its own cache
        head_staged = staged_inputs("head")
        log(f"staged from the bucket: head {head_staged}, worker {worker_staged}")
        inputs = {"data.path": 1, "data.images": 1, "data.tasks_file": 1, "model.pretrained": 1}
        # the head (the sweep's driver) copies the images, decodes them once and uploads the shared cache; the
        # worker downloads that cache and never copies the images
        assert head_staged == inputs, "the head stages each input once"
        assert worker_staged == {k: v for k, v in inputs.items() if k != "data.images"}, \
            "the worker stages each input once, and not the images"
        log(f"the worker's image pixels: {worker_events}")
        assert worker_events == ["downloaded"], "the worker downloads the shared image cache, decodes nothing"
        assert any(r["config"]["data"]["images"].startswith("s3://") for r in res.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="sweeps/default.yaml")
    p.add_argument("--data", choices=("bucket", "generated"), default="bucket",
                   help="bucket: a JPEG dataset and CLIP weights in the bucket only (default); generated: the "
                        "embedded default benchmark")
    p.add_argument("--set", action="append", default=[], help="config override for every trial")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the sweep")
    a = p.parse_args()
    t0 = time.time()
    from tests.s3server import CREDENTIALS

    creds = {k: os.environ.get(k, v) for k, v in CREDENTIALS.items()}
    env = {**os.environ, **creds, "RAY_AUTH_MODE": "token"}
    os.environ.update(creds)
    uri = f"s3://ccr/{Path(a.sweep).stem}?endpoint_override=127.0.0.1:{S3_PORT}&scheme=http"
    sshd = s3 = cluster = None
    ok = False
    try:
        import ray._private.utils

        if ray._private.utils.get_dashboard_dependency_error():  # the dashboard and job API need ray[default]
            sh(f"{sys.executable} -m pip install -q -e '{REPO}[cluster]'", quiet=True)
        sshd = ensure_ssh()
        s3 = start_s3()
        cluster = WORK / "cluster.yaml"
        cluster, worker_id = bring_up(a, env)
        job = Job(a, uri, env, creds)
        from ccr.io.storage import Storage

        victim, staged, events = lose_the_worker(Storage(uri).child("runs"), worker_id, job, a.timeout)
        status = job.wait(a.timeout)
        job.tail(5)
        assert "' succeeded" in status, f"the sweep job did not succeed: {status.strip()[-500:]}"
        log(f"sweep job succeeded in {time.time() - job.started:.0f} s")
        verify(a, uri, worker_id, victim, staged, events)
        sh(f"{PYTHON} -m ccr.cli analyze {shlex.quote(uri)}", env=env)
        summary = Storage(uri).child("analysis").read_text("summary.md")
        print("\n".join(summary.splitlines()[:25]))
        ok = True
    finally:
        teardown(cluster, env, [s3, sshd])
        log(f"cluster check {'passed' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
