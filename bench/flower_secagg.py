#!/usr/bin/env python3
"""Flower 1.18 SecAgg+ reference benchmark (simulation engine).

One Flower simulation per invocation: `n` virtual SuperNodes whose ClientApp
returns a fixed float32 vector of `m` values from `fit` (no training), a
ServerApp running `DefaultWorkflow` with either Flower's `SecAggPlusWorkflow`
(client side: `secaggplus_mod`) or the plain FedAvg fit workflow.

The fit workflow of every round is wrapped in a timer (`perf_counter` around
the whole fit workflow call: for SecAgg+ that is setup, share-keys,
collect-masked-vectors and unmask stages plus `FedAvg.aggregate_fit`).
Evaluation is disabled (`fraction_evaluate=0`), so the fit workflow is the
round. The first `--warmup` rounds are discarded (Ray actor start-up, imports);
the median of the remaining `--rounds` is reported.

Dropout: `round(n * dropout)` clients (the same ones every round) raise an
exception from `fit`, i.e. after they have sent their public keys and their
encrypted key shares, exactly when `secaggplus_mod` would compute and upload
their masked vector. The simulation engine turns the exception into an error
reply (`ErrorCode.CLIENT_APP_RAISED_EXCEPTION`); `SecAggPlusWorkflow` drops
those nodes from the active set at the collect-masked-vectors stage and the
unmask stage reconstructs their `sk1` from the neighbours' shares and removes
their pairwise masks. This is the same point at which `fedmesh bench secagg`
drops members ("drop after sharing keys"). Flower's own example instead makes
a client sleep past the workflow `timeout`; that would add the timeout to the
round time, so it is not used here (pass `--drop-mode sleep --timeout T` to
get that behaviour anyway).

Prints one line `FLOWER_RESULT {json}` on stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402

import flwr  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.common import recorddict_compat as compat  # noqa: E402
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.default_workflows import default_fit_workflow  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)
    return sum(v) - idle, sum(v)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, required=True, help="number of clients (all sampled every round)")
    p.add_argument("--m", type=int, default=100_000, help="float32 values per update")
    p.add_argument(
        "--mode",
        choices=["sparse", "complete", "plain"],
        default="sparse",
        help="sparse: SecAgg+ with --num-shares/--threshold (default 7/4); "
        "complete: num_shares=n, threshold=n//2+1; plain: FedAvg without secure aggregation",
    )
    p.add_argument("--num-shares", type=int, default=None, help="override num_shares")
    p.add_argument("--threshold", type=int, default=None, help="override reconstruction_threshold")
    p.add_argument("--dropout", type=float, default=0.0, help="fraction of clients that drop after sharing keys")
    p.add_argument("--drop-mode", choices=["raise", "sleep"], default="raise")
    p.add_argument("--timeout", type=float, default=None, help="SecAggPlusWorkflow timeout (s); needed for --drop-mode sleep")
    p.add_argument("--rounds", type=int, default=5, help="measured (warm) rounds")
    p.add_argument("--warmup", type=int, default=1, help="rounds discarded before measuring")
    p.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray client_resources num_cpus (1 -> 2 actors on 2 cores)")
    p.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2, help="CPUs given to ray.init")
    p.add_argument("--out", default=None, help="also write the result JSON to this file")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    n, m = a.n, a.m
    if a.mode == "sparse":
        num_shares = a.num_shares if a.num_shares is not None else 7
        threshold = a.threshold if a.threshold is not None else 4
    elif a.mode == "complete":
        num_shares = a.num_shares if a.num_shares is not None else n
        threshold = a.threshold if a.threshold is not None else n // 2 + 1
    else:
        num_shares = threshold = None
    n_drop = int(round(n * a.dropout))
    if a.mode == "plain" and n_drop:
        sys.exit("plain FedAvg is only measured without dropout")
    drop_mode, sleep_s = a.drop_mode, (a.timeout or 0.0) + 5.0
    total_rounds = a.warmup + a.rounds

    # ---------------- ClientApp ----------------
    def client_fn(context: Context):
        pid = int(context.node_config["partition-id"])
        drops = pid < n_drop  # partition ids 0..n_drop-1 drop; the graph is shuffled by the server

        class FixedClient(NumPyClient):
            def fit(self, parameters, config):
                if drops:
                    if drop_mode == "sleep":
                        time.sleep(sleep_s)
                    else:
                        raise RuntimeError("simulated dropout after sharing keys")
                # Fixed vector, no training: only the protocol is timed.
                return [np.full(m, 0.01, dtype=np.float32)], 1, {}

        return FixedClient().to_client()

    mods = [secaggplus_mod] if a.mode != "plain" else []
    client_app = ClientApp(client_fn=client_fn, mods=mods)

    # ---------------- ServerApp ----------------
    round_times: list[float] = []
    agg_errors: list[float] = []
    busy_cores: list[float] = []

    def timed(inner):
        def fit_workflow(grid: Grid, context: Context) -> None:
            c0 = cpu_times()
            t0 = time.perf_counter()
            inner(grid, context)
            round_times.append(time.perf_counter() - t0)
            c1 = cpu_times()
            # machine-wide busy cores during the round (all processes, not only Flower's)
            busy_cores.append((c1[0] - c0[0]) / max(c1[1] - c0[1], 1e-9) * (os.cpu_count() or 1))
            # Sanity check (outside the timed region): every surviving client sent
            # 0.01 everywhere, so the weighted average must be ~0.01.
            params = compat.arrayrecord_to_parameters(context.state.array_records["parameters"], keep_input=True)
            agg = parameters_to_ndarrays(params)[0]
            agg_errors.append(float(np.max(np.abs(agg - 0.01))))

        return fit_workflow

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_evaluate_clients=0,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([np.zeros(m, dtype=np.float32)]),
        )
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=total_rounds), strategy=strategy)
        if a.mode == "plain":
            inner = default_fit_workflow
        else:
            inner = SecAggPlusWorkflow(
                num_shares=num_shares,
                reconstruction_threshold=threshold,
                timeout=a.timeout,
            )
        DefaultWorkflow(fit_workflow=timed(inner))(grid, ctx)

    backend_config = {
        "client_resources": {"num_cpus": a.cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": a.ray_cpus,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "_node_ip_address": "127.0.0.1",  # keep Ray on loopback
        },
    }
    t_start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config=backend_config,
    )
    t_total = time.perf_counter() - t_start

    warm = round_times[a.warmup :]
    if len(round_times) != total_rounds or not warm:
        print(f"FLOWER_ERROR rounds timed: {round_times}", file=sys.stderr)
        sys.exit(1)
    import ray

    res = {
        "flwr": flwr.__version__,
        "ray": ray.__version__,
        "python": sys.version.split()[0],
        "n": n,
        "m": m,
        "mode": a.mode,
        "num_shares": num_shares,
        "threshold": threshold,
        "dropout": a.dropout,
        "dropped_clients": n_drop,
        "drop_mode": drop_mode if n_drop else None,
        "timeout": a.timeout,
        "warmup_rounds_s": round_times[: a.warmup],
        "rounds_s": warm,
        "median_s": statistics.median(warm),
        "cpus_per_client": a.cpus_per_client,
        "ray_cpus": a.ray_cpus,
        "actors": int(a.ray_cpus // a.cpus_per_client),
        "machine_busy_cores_warm": [round(x, 2) for x in busy_cores[a.warmup :]],
        "simulation_wall_s": t_total,
        "max_abs_error_of_aggregate": max(agg_errors) if agg_errors else None,
    }
    line = json.dumps(res)
    print("FLOWER_RESULT " + line, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
