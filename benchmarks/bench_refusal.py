"""How fast a bad spec is refused (prints figures; nothing asserted).

    python benchmarks/bench_refusal.py            # 300 fuzz mutants + the absurd-size cases

The tests (tests/test_fuzz_spec.py) check *what* each refusal says and that memory stays
bounded; how long it takes is machine-dependent and measured here: the slowest and the median
mutant through the validation every command makes first, and each space command on the five
absurd-size specs through the CLI (the aim: validation in milliseconds, a space that exhausts
the size count's budget in about a second, every absurd size refused in under a second).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import test_fuzz_spec as fz
    from typer.testing import CliRunner

    from archsearch.cli.main import app

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for path in fz.SHIPPED:  # lazy imports before the clock starts
            fz._validate(path.read_text())
        times = []
        for text in fz._mutants(tmp_path):
            t0 = time.perf_counter()
            fz._validate(text)
            times.append(time.perf_counter() - t0)
        print(f"{len(times)} mutants: median {statistics.median(times) * 1e3:.1f} ms, "
              f"slowest {max(times):.2f} s (aim: < 5 s each)")
        runner = CliRunner()
        for command in ("validate", "show", "sample", "run"):
            worst = 0.0
            for path, _ in fz._absurd(tmp_path).values():
                args = [command, str(path)] + (["--reports-dir", str(tmp_path)] if command == "run" else [])
                t0 = time.perf_counter()
                runner.invoke(app, args)
                worst = max(worst, time.perf_counter() - t0)
            print(f"archsearch {command}: slowest absurd-size refusal {worst:.2f} s (aim: < 1 s)")


if __name__ == "__main__":
    main()
