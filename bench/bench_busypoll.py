"""What busy polling costs the event-loop thread, in real CPU time.

For each window: the loop thread's CPU time while it polls through one window after a
single arm (ideally the whole window: it never sleeps), after the window has passed
(ideally nothing: it sleeps again), and the share of the polled time that the poller
counts as busy (ideally near 0: idle polling must not look like load to ``LoopLoad``).
Ratios are against the wall time of the same phase, measured in the same run.

Prints a table and writes bench/results/busypoll.json. Timings are reported, never asserted.

    python bench/bench_busypoll.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from warpserve.server.busypoll import BusyPoller

BENCH_DIR = Path(__file__).resolve().parent
WINDOWS_US = (1000, 50_000, 200_000)


async def _phase(seconds: float) -> tuple[float, float]:
    """Wall and loop-thread CPU seconds of ``seconds`` with nothing of its own to do."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    await asyncio.sleep(seconds)
    return time.perf_counter() - wall0, time.thread_time() - cpu0


async def measure_window(window_us: int, repeats: int) -> dict[str, Any]:
    poller = BusyPoller(window_us)
    window_s = window_us / 1e6
    polled = after = wall_polled = wall_after = busy = 0.0
    for _ in range(repeats):
        busy0 = poller.busy_cpu_ns()
        poller.arm()
        wall, cpu = await _phase(window_s)
        busy += (poller.busy_cpu_ns() - busy0) / 1e9
        polled, wall_polled = polled + cpu, wall_polled + wall
        while poller.spinning:  # the last pass of the window
            await asyncio.sleep(0)
        wall, cpu = await _phase(max(window_s, 0.05))
        after, wall_after = after + cpu, wall_after + wall
    return {
        "window_us": window_us,
        "repeats": repeats,
        "cpu_share_while_polling": polled / wall_polled,
        "cpu_share_after_window": after / wall_after,
        "busy_share_of_polled_cpu": busy / polled if polled else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "busypoll.json")
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    rows = [asyncio.run(measure_window(w, repeats)) for w in WINDOWS_US]
    print(f"{'window us':>10} {'CPU/wall polling':>17} {'CPU/wall after':>15} {'busy/polled':>12}")
    for r in rows:
        busy = r["busy_share_of_polled_cpu"]
        print(
            f"{r['window_us']:>10} {r['cpu_share_while_polling']:>17.2f} "
            f"{r['cpu_share_after_window']:>15.3f} {'n/a' if busy is None else f'{busy:.3f}':>12}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"windows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
