"""Workers on separate hosts: the API, Redis and an S3 server (moto) on one test host, one reference worker on
each of two others (``netns``: network namespaces on a bridge, each with its own hostname and its own empty
local disk), sharing only Redis and the object store. Every job runs exactly once, cross-job batching
included; a token learned on one host serves a job on the other; a host whose worker is killed mid-job loses
the job to the other host, where it runs again and succeeds once. Prints the per-job cost it measured
(the README's scale-out estimate is made of it)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from workers.keys import Keys
from workers.records import decode_events
from workers.settings import Settings

from . import netns
from .conftest import JobsOverHttp

pytestmark = pytest.mark.slow

WORKER_HOSTS = ("a", "b")
REDIS_PORT, S3_PORT, API_PORT = 6379, 5000, 8000  # each host's ports are its own: nothing else listens there
S3_ENV = {"AWS_ACCESS_KEY_ID": "tally-test", "AWS_SECRET_ACCESS_KEY": "tally-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}
TINY_LEARNING = {"TALLY_LIBRARY__MAX_ITERATIONS": "2", "TALLY_LIBRARY__SEEDS_PER_ITERATION": "2", "TALLY_LIBRARY__CALIBRATION_SEEDS": "4",
                 "TALLY_LIBRARY__VALIDATION_SEEDS": "4", "TALLY_LIBRARY__VALIDATE_EVERY": "1",
                 "TALLY_LIBRARY__MIN_GAIN": "-1", "TALLY_LIBRARY__MAX_GAIN_P": "1"}  # admit whatever a tiny run learns
BATCH_SIZE = 4  # a worker takes up to 4 queued jobs at once: both hosts race for the same queue's jobs
KEYS = Keys()
STORE_PREFIX = "deploy"


def _wait_until(predicate, timeout: float, message: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, message
        time.sleep(every)
    return result


@dataclass
class Cluster(JobsOverHttp):
    """The running test hosts, seen from this process (a client on their LAN)."""

    workers: dict[str, netns.HostLauncher]  # host role -> the launcher of its worker
    disks: dict[str, Path]  # host role -> its local disk
    http: httpx.Client
    redis: redis.Redis
    s3_endpoint: str
    bucket: str

    # ------------------------------------------------------------------------------------------- jobs
    def events(self, job_id: str) -> list[dict]:
        return [event for _, event in decode_events(self.redis.xrange(KEYS.job_events(job_id)))]

    def starts(self, job_id: str) -> int:
        """Times a worker took the job: each start is one running event at the sampling stage, before any progress."""
        return sum(e["status"] == "running" and e.get("stage") == "sampling" and "progress" not in e
                   for e in self.events(job_id))

    def rq_worker(self, job_id: str) -> str | None:
        """The host whose worker RQ last gave the job to."""
        name = self.redis.hget(f"rq:job:{job_id}", "worker_name")
        return name.decode().removeprefix("w-") if name else None

    def holder(self, job_id: str) -> str | None:
        """The host whose worker holds the job's running execution (RQ's index of each worker's executions)."""
        for role in WORKER_HOSTS:
            if any(entry.decode().startswith(f"{job_id}:")
                   for entry in self.redis.smembers(f"rq:worker:w-{role}:executions")):
                return role
        return None

    def finished_on(self, role: str) -> list[str]:
        """The jobs whose end the host's worker logged, once per end: its JSON line for a finished job carries
        the job id and the status it ended with."""
        path = self.workers[role].log_dir / f"worker-w-{role}.log"
        ended = []
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # not a log record (e.g. a library's print)
            if isinstance(entry, dict) and entry.get("job_id") and entry.get("status") in ("succeeded", "failed",
                                                                                            "canceled"):
                ended.append(entry["job_id"])
        return ended

    def ran_on(self, job_id: str) -> list[str]:
        """Each host whose worker finished the job, as often as it did."""
        return [role for role in WORKER_HOSTS for ended in self.finished_on(role) if ended == job_id]

    # ---------------------------------------------------------------------------------------- workers
    def running(self, role: str) -> bool:
        proc = self.workers[role].processes.get(f"worker-w-{role}")
        return proc is not None and proc.poll() is None

    def start(self, role: str) -> None:
        if self.running(role):
            return
        self.workers[role].start_worker("reference", f"w-{role}")
        self.wait_started(role)

    def wait_started(self, role: str, timeout: float = 120) -> None:
        """Until the worker's heartbeat is in Redis (it has loaded its model and serves)."""
        proc, deadline = self.workers[role].processes[f"worker-w-{role}"], time.monotonic() + timeout
        while not self.redis.exists(KEYS.worker("reference", f"w-{role}")):
            assert proc.poll() is None, f"host {role}'s worker exited with {proc.returncode}: {self._tail(role)}"
            assert time.monotonic() < deadline, f"host {role}'s worker did not start in {timeout} s: {self._tail(role)}"
            time.sleep(0.2)

    def stop(self, role: str) -> None:
        """SIGTERM: the worker puts a running job back and exits, its heartbeat gone."""
        self.workers[role].stop(f"worker-w-{role}")

    def kill(self, role: str) -> None:
        """SIGKILL, as a host that loses power: nothing of the worker says goodbye."""
        proc = self.workers[role].processes.pop(f"worker-w-{role}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def only(self, role: str) -> None:
        """Just this host's worker runs."""
        self.start(role)
        for other in WORKER_HOSTS:
            if other != role:
                self.stop(other)

    def _tail(self, role: str) -> str:
        path = self.workers[role].log_dir / f"worker-w-{role}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def files_on(self, role: str, pattern: str) -> list[Path]:
        return sorted(self.disks[role].rglob(pattern))

    def stored(self, key: str) -> bool:
        """Whether the object store holds ``key`` (under the deployment's prefix), looked at from outside Tally."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
        return client.list_objects_v2(Bucket=self.bucket, Prefix=f"{STORE_PREFIX}/{key}").get("KeyCount", 0) > 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three test hosts: ``api`` (Redis, moto's S3 server, the API) and ``a``, ``b`` (a reference worker each)."""
    reason = netns.unavailable()
    if reason:
        pytest.fail(f"the multi-host test makes test hosts with network namespaces, and cannot here: {reason}")
    root = tmp_path_factory.mktemp("multihost")
    with netns.TestNetwork() as network, ExitStack() as processes:
        api_host = network["api"]
        redis_url = f"redis://{api_host.address}:{REDIS_PORT}/0"
        s3_endpoint = f"http://{api_host.address}:{S3_PORT}"  # moto's S3 server, started below
        bucket = f"tally-{uuid.uuid4().hex[:12]}"
        shared = {"TALLY_REDIS_URL": redis_url, "TALLY_STORE": f"s3://{bucket}/{STORE_PREFIX}",
                  "TALLY_S3_ENDPOINT_URL": s3_endpoint, "TALLY_STORE_CREATE_BUCKET": "true", **S3_ENV,
                  "TALLY_AUTH": "off", "TALLY_WORKER_HEARTBEAT_S": "1", "TALLY_BATCH_SIZE": str(BATCH_SIZE),
                  "TALLY_LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", **TINY_LEARNING}

        def host_launcher(role: str) -> netns.HostLauncher:
            disk = root / role  # the host's own local disk, empty at start
            env = {**shared, "TALLY_RUNTIME_DIR": str(disk / "runtime"), "TALLY_TOKEN_DIR": str(disk / "tokens"),
                   "YOLO_CONFIG_DIR": str(disk / "runtime" / "ultralytics"), "HOME": str(disk / "home")}
            settings = Settings(redis_url=redis_url, runtime_dir=disk / "runtime")
            launcher = netns.HostLauncher(network[role], settings, env=env, log_dir=disk / "logs")
            processes.callback(launcher.stop_all)
            return launcher

        api = host_launcher("api")
        api.start_redis(REDIS_PORT, root / "api")
        assert api.start_s3(S3_PORT) == s3_endpoint
        api.start_api(api_host.address, API_PORT)
        workers = {role: host_launcher(role) for role in WORKER_HOSTS}
        for role in WORKER_HOSTS:
            workers[role].start_worker("reference", f"w-{role}")  # both load at once; waited for below
        http = processes.enter_context(httpx.Client(base_url=f"http://{api_host.address}:{API_PORT}", timeout=30))
        running = Cluster(workers, {role: root / role for role in WORKER_HOSTS}, http, redis.Redis.from_url(redis_url),
                          s3_endpoint, bucket)
        for role in WORKER_HOSTS:
            running.wait_started(role)
        api.wait_ready(str(http.base_url).rstrip("/"), timeout=30, models=["reference"])
        yield running


def _report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[multihost] {line}")


# ---------------------------------------------------------------------------------------------- scenarios
def test_every_job_runs_exactly_once_and_both_hosts_run_some(cluster, capsys):
    for role in WORKER_HOSTS:
        cluster.start(role)
    colours = ("red", "green", "blue", "black")
    first = time.time()
    jobs = [cluster.submit(prompt=f"a photo of {colours[n % 4]} circles", count=2 + n % 3, seed=100 + n,
                           policy="resample", budget={"max_candidates": 2}) for n in range(12)]
    records = [cluster.wait(job, timeout=150) for job in jobs]

    assert [r["status"] for r in records] == ["succeeded"] * 12, [r["error"] for r in records]
    ran_on = {job: cluster.ran_on(job) for job in jobs}
    assert all(len(hosts) == 1 for hosts in ran_on.values()), ran_on  # one end, logged by one host
    assert {job: cluster.rq_worker(job) for job in jobs} == {job: hosts[0] for job, hosts in ran_on.items()}
    assert [cluster.starts(job) for job in jobs] == [1] * 12  # taken once: never started twice, never requeued
    assert not any(e.get("requeued") for job in jobs for e in cluster.events(job))  # never put back, not even in words
    assert {hosts[0] for hosts in ran_on.values()} == set(WORKER_HOSTS), ran_on  # the work was shared
    for role in WORKER_HOSTS:  # images went to the store, not to a host's disk
        assert cluster.files_on(role, "*.png") == []
    assert all(cluster.stored(f"images/{job}/0.png") for job in jobs)

    seconds = [r["timings"]["finished"] - r["timings"]["started"] for r in records]
    makespan = max(r["timings"]["finished"] for r in records) - first
    share = {role: sum(hosts == [role] for hosts in ran_on.values()) for role in WORKER_HOSTS}
    _report(capsys, f"12 resample jobs (1 image, <= 2 candidates, batches of <= {BATCH_SIZE}) ran {share}: "
                    f"first submit to last finish {makespan:.1f} s = {12 / makespan:.2f} jobs/s on 2 hosts, "
                    f"{2 * makespan / 12:.2f} host-seconds per job; a job's started->finished median "
                    f"{statistics.median(seconds):.2f} s (its batch); {os.cpu_count()} CPU cores shared by both hosts")


def _crosses(seed: int, num_images: int) -> dict:
    """A job that samples until it has ``num_images`` and schedules no learning: twelve crosses verify about one
    candidate in four (eight images took 1.7-3.4 s alone on ten seeds, 2026-12-05). Its budget is ample: both
    hosts share two cores, and a batch can stall for seconds when they contend (8 images in 8.4 s, seen)."""
    return {"prompt": "a photo of black crosses", "count": 12, "num_images": num_images, "seed": seed,
            "policy": "resample", "budget": {"max_seconds": 60, "max_candidates": 1024}}


def _sampling(cluster: Cluster, job: str) -> bool:
    """Whether the job has reported its first candidates (it is mid-job, not just taken)."""
    return any("progress" in event for event in cluster.events(job))


def _assert_moved(cluster: Cluster, jobs: list[str], survivor: str, killed: float) -> float:
    """Each job ran on both hosts, finished on the survivor only, and succeeded once; returns how long after
    the kill the survivor started the last of them."""
    records = [cluster.wait(job, timeout=90) for job in jobs]
    assert [r["status"] for r in records] == ["succeeded"] * len(jobs), [r["error"] for r in records]
    for job in jobs:
        events = cluster.events(job)
        assert cluster.ran_on(job) == [survivor] and cluster.rq_worker(job) == survivor  # finished there only
        assert cluster.starts(job) == 2  # started on both hosts ...
        assert sum(bool(e.get("requeued")) for e in events) == 1  # ... put back once ...
        assert sum(e["status"] == "succeeded" for e in events) == 1  # ... and succeeded once
    moved_after = max(r["timings"]["started"] for r in records) - killed
    assert 0 < moved_after < 30, moved_after  # the victim's heartbeat lapsed (3 s) and the survivor noticed
    return moved_after


def test_a_host_killed_mid_job_loses_the_job_to_the_other_host_where_it_succeeds_once(cluster, capsys):
    for role in WORKER_HOSTS:
        cluster.start(role)
    job = cluster.submit(**_crosses(7, num_images=8))
    cluster.wait(job, timeout=60, until=("running",))
    victim = _wait_until(lambda: cluster.holder(job), 10, "no worker holds the running job")
    survivor = next(role for role in WORKER_HOSTS if role != victim)
    _wait_until(lambda: _sampling(cluster, job), 60, "the job reported no candidates")
    assert cluster.record(job)["status"] == "running"  # mid-job
    cluster.kill(victim)
    moved_after = _assert_moved(cluster, [job], survivor, time.time())
    _report(capsys, f"killed host {victim}'s worker mid-job; host {survivor} started the job {moved_after:.1f} s "
                    "later (heartbeat 1 s, liveness by heartbeat alone: the hosts' names differ)")


def test_a_host_killed_mid_batch_loses_every_job_of_the_batch_to_the_other_host(cluster, capsys):
    for role in WORKER_HOSTS:
        cluster.start(role)
    blockers = []
    for seed in (31, 32):  # one on each host, so the jobs below queue up and one host takes them together
        blockers.append(cluster.submit(**_crosses(seed, num_images=2)))
        cluster.wait(blockers[-1], timeout=60, until=("running",))
    # A batch of BATCH_SIZE images gives each job one candidate: four images take each job several batches.
    batch = [cluster.submit(**_crosses(40 + n, num_images=4)) for n in range(BATCH_SIZE)]
    _wait_until(lambda: all(cluster.record(job)["status"] == "running" for job in batch), 60,
                "the batch did not start")
    holders = {job: cluster.holder(job) for job in batch}
    victim = holders[batch[0]]
    assert victim is not None and set(holders.values()) == {victim}, holders  # one batch, on one host
    survivor = next(role for role in WORKER_HOSTS if role != victim)
    _wait_until(lambda: all(_sampling(cluster, job) for job in batch), 60, "the batch reported no candidates")
    assert all(cluster.record(job)["status"] == "running" for job in batch)  # mid-batch
    cluster.kill(victim)
    moved_after = _assert_moved(cluster, batch, survivor, time.time())
    _report(capsys, f"killed host {victim}'s worker mid-batch ({BATCH_SIZE} jobs); host {survivor} had started "
                    f"them all {moved_after:.1f} s later")


def test_a_token_learned_on_one_host_is_used_by_a_job_on_the_other(cluster, capsys):
    learner = next((role for role in WORKER_HOSTS if cluster.running(role)), "a")
    user = next(role for role in WORKER_HOSTS if role != learner)
    cluster.only(learner)
    first = cluster.wait(cluster.submit(prompt="a photo of green squares", count=3, seed=21, policy="library",
                                        budget={"max_candidates": 2}))
    key = first["token"]["key"]
    assert first["token"]["library_hit"] is False and first["token"]["learning_scheduled"] is True
    _wait_until(lambda: cluster.http.get(f"/v1/tokens/{key}").status_code == 200, 120,
                f"host {learner} did not learn {key}")
    assert cluster.stored(f"tokens/{key}.safetensors")  # the durable copy is in the store

    cluster.start(user)
    cluster.stop(learner)
    second = cluster.wait(cluster.submit(prompt="a photo of red squares", count=3, seed=22, policy="library",
                                         budget={"max_candidates": 2}))
    assert second["status"] == "succeeded", second["error"]
    assert second["token"] == {"key": key, "library_hit": True, "learning_scheduled": False}
    assert cluster.ran_on(first["id"]) == [learner] and cluster.ran_on(second["id"]) == [user]
    for role in WORKER_HOSTS:
        assert cluster.files_on(role, "*.safetensors") == []  # no host keeps tokens on its own disk
    seconds = second["timings"]["finished"] - second["timings"]["started"]
    _report(capsys, f"token {key} learned on host {learner}, used on host {user}; that job alone on its host "
                    f"(1 image, library hit): {seconds:.2f} s started->finished, "
                    f"engine {second['cost']['seconds']:.2f} s")
