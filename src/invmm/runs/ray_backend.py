"""The Ray backend of the run engine: one actor per GPU (or per CPU slot), each loading the model once.

The driver keeps one batch in flight per actor, collects finished batches with `ray.wait`, and writes
every result itself. A batch whose actor died is requeued (bounded per image), the actor replaced.
Scores equal the local backend's: each image's random streams depend only on the run seed and its id.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from invmm.config import InvMMConfig
from invmm.errors import InvMMInputError
from invmm.inversion import Inverter, Outcome, Target
from invmm.mitigations import load_mitigated
from invmm.records import InversionRecord
from invmm.similarity import build_similarity


class InversionWorker:
    """Runs inside a Ray actor process."""

    def __init__(self, model: str, device: str, config: dict, batch_images: int, allow_pickle: bool,
                 threads: int | None, load_options: dict | None = None):
        if threads:
            torch.set_num_threads(threads)
        cfg = InvMMConfig.from_json(config)
        adapter = load_mitigated(model, device=device, allow_pickle=allow_pickle, **(load_options or {}))
        sim = build_similarity(cfg.similarity, sscd_model=cfg.sscd_model, sscd_resize=cfg.sscd_resize)
        self.inverter = Inverter(adapter, cfg, sim, batch_images=batch_images)

    def pid(self) -> int:
        return os.getpid()

    def invert(self, targets: list[Target]) -> list[tuple[dict, object, object, object, object]]:
        outs = self.inverter.run(targets)
        return [(o.result.to_json(), o.mu, o.logvar, o.samples, o.map) for o in outs]


@contextlib.contextmanager
def ray_session(address: str | None = None, *, data: bool = False):
    """Ray, initialised here unless the caller already did (then left running); shut down if started here."""
    try:
        import ray

        if data:
            import ray.data  # noqa: F401
    except ImportError:
        raise InvMMInputError(f"--backend ray needs Ray{' Data' if data else ''}: pip install 'invmm[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _cluster_slots(ray, gpus_per_worker: float, workers: int | None) -> tuple[int, dict, str]:
    res = ray.cluster_resources()
    gpus = res.get("GPU", 0)
    if gpus >= gpus_per_worker > 0:
        n = int(gpus // gpus_per_worker)
        return (min(n, workers) if workers else n), {"num_gpus": gpus_per_worker, "num_cpus": 1}, "cuda"
    n = int(res.get("CPU", 1))
    return (min(n, workers) if workers else n), {"num_cpus": 1}, "cpu"


def run_on_ray(targets: Iterator[Target], model: str, config: InvMMConfig, *, batch_images: int,
               record: Callable[[InversionRecord, Outcome | None], None], address: str | None = None,
               gpus_per_worker: float = 1.0, workers: int | None = None, max_retries: int = 2,
               allow_pickle: bool = False, on_workers: Callable[[list], None] | None = None,
               load_options: dict | None = None) -> tuple[int, str]:
    """Runs every target; returns the number of actors and their device."""
    with ray_session(address) as ray:
        n, resources, device = _cluster_slots(ray, gpus_per_worker, workers)
        remote = ray.remote(**resources)(InversionWorker)
        threads = 1 if device == "cpu" else None

        def spawn():
            return remote.remote(model, device, config.to_json(), batch_images, allow_pickle, threads, load_options)

        actors = [spawn() for _ in range(max(1, n))]
        if on_workers:
            on_workers(actors)
        queue: list[Target] = []  # retried targets go first
        attempts: dict[tuple[str, int], int] = {}  # per (image, repeat)
        source = iter(targets)
        in_flight: dict = {}  # object ref -> (actor index, targets)

        def next_batch() -> list[Target]:
            batch = []
            while queue and len(batch) < batch_images:
                batch.append(queue.pop(0))
            while len(batch) < batch_images:
                t = next(source, None)
                if t is None:
                    break
                batch.append(t)
            return batch

        def submit(i: int) -> None:
            batch = next_batch()
            if batch:
                in_flight[actors[i].invert.remote(batch)] = (i, batch)

        for i in range(len(actors)):
            submit(i)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            i, batch = in_flight.pop(ref)
            try:
                outs = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                ray.kill(actors[i], no_restart=True)
                actors[i] = spawn()
                if on_workers:
                    on_workers(actors)
                for t in batch:
                    key = (t.id, t.repeat)
                    attempts[key] = attempts.get(key, 0) + 1
                    if attempts[key] > max_retries:
                        record(InversionRecord(id=t.id, path=t.path, status="error", error_kind="worker",
                                               repeat=t.repeat,
                                               error=f"the Ray worker died {attempts[key]} times on this image "
                                                     f"({type(exc).__name__}); not retried again"), None)
                    else:
                        queue.append(t)
                submit(i)
                continue
            for res_json, mu, logvar, samples, map_ in outs:
                res = InversionRecord.from_json(res_json)
                record(res, Outcome(res, mu, logvar, samples, map_))
            submit(i)
        return len(actors), device
