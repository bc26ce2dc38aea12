"""Scale-out: the pipeline's throughput with 1, 2 and 4 worker processes and 1 and 2 web processes.

``python -m bench scaleout`` (PostgreSQL + Redis only: the embedded default is one machine by
design). For each combination, on a fresh throwaway database (so no backlog of the previous one
leaks into it), the pipeline benchmark's run (``bench.pipeline.run_mode``: in-app + email, one
recipient per trigger, fake ESP, real processes) is offered ``rate`` triggers/s — more than one
worker process carries, so the completions per second show the capacity of that combination.

For each combination the CPU of the load window says where the limit is: ``system_cores`` (CPU of
web + workers + fake ESP + PostgreSQL + Redis per second of wall time; the machine has ``nproc``)
and ``postgres_share`` (PostgreSQL's part of it). PostgreSQL is the limit where adding worker
processes no longer adds throughput while PostgreSQL's share grows; on a machine whose cores are
all busy (``system_cores`` ≈ ``nproc``), the CPU itself is, and the shares say who uses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench import pipeline
from bench.common import Installation, log
from bench.report import Row, Skipped


@dataclass(frozen=True)
class Config:
    rate: float = 400.0
    seconds: float = 30.0
    warmup_seconds: float = 3.0
    workers: tuple[int, ...] = (1, 2, 4)
    webs: tuple[int, ...] = (1, 2)
    drain_timeout: float = 5.0  # an overloaded combination is not drained: the next gets a new database
    subscribers: int = 1000

    @classmethod
    def quick(cls) -> Config:
        return cls(rate=20.0, seconds=3.0, warmup_seconds=0.0, workers=(1, 2), webs=(1,), subscribers=20)


def run(installation: Installation, config: Config | None = None) -> dict[str, Any]:
    config = config or Config()
    result: dict[str, Any] = {"config": config.__dict__, "cpus": os.cpu_count(), "combinations": []}
    if installation.database != "postgresql" or not installation.redis_url:
        raise Skipped("needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    for web in config.webs:
        for workers in config.workers:
            fresh = installation.fresh()
            try:
                mode = pipeline.run_mode(
                    fresh,
                    pipeline.Config(
                        rate=config.rate,
                        seconds=config.seconds,
                        warmup_seconds=config.warmup_seconds,
                        subscribers=config.subscribers,
                        web_processes=web,
                        worker_processes=workers,
                        drain_timeout=config.drain_timeout,
                        embedded=False,
                    ),
                    "services",
                )
            finally:
                fresh.cleanup()
            cpu = mode["cpu_seconds_load_window"]
            combo = {
                "web_processes": web,
                "worker_processes": workers,
                "offered": config.rate,
                "accepted_per_s": mode["loadgen"]["achieved_rate"],
                "trigger_p99_ms": mode["loadgen"]["p99_ms"],
                "sustained_events_per_s": mode["sustained_events_per_s"],
                "backlog_growth_per_s": mode["backlog_growth_per_s"],
                "system_cores": cpu["system_cores"],
                "other_cores": cpu.get("other_cores", 0.0),
                "postgres_share": cpu["postgres_share"],
                "cores": {
                    g: round(cpu[g] / cpu["wall_seconds"], 2) if cpu["wall_seconds"] else 0.0
                    for g in ("web", "worker", "postgres", "redis", "esp", "loadgen")
                },
            }
            log(f"scaleout: web x{web} worker x{workers}: {combo}")
            result["combinations"].append(combo)
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    combos = result["combinations"]
    first = combos[0]["sustained_events_per_s"] if combos else 0.0
    out = []
    for combo in combos:
        cores = combo["cores"]
        out.append(
            Row(
                "scaleout",
                f"web x{combo['web_processes']}, worker x{combo['worker_processes']} (offered {combo['offered']:g}/s)",
                combo["sustained_events_per_s"],
                "events/s",
                baseline=first or None,
                baseline_name="web x1 worker x1",
                key="scaleout",
                note=(
                    f"CPU cores busy {combo['system_cores']} of {result['cpus']} "
                    f"(other work on the machine: {combo.get('other_cores', 0)}): web {cores['web']}, "
                    f"workers {cores['worker']}, postgres {cores['postgres']} "
                    f"({combo['postgres_share']:.0%} of the system's), redis {cores['redis']}, "
                    f"loadgen {cores['loadgen']}; trigger p99 {combo['trigger_p99_ms']} ms; "
                    f"backlog growth {combo['backlog_growth_per_s']}/s"
                ),
            )
        )
    return out
