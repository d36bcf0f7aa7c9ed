"""Only the churn scenario: ``python -m bench.churn`` (``BENCH_SCALE`` as for ``make bench``).

Starts its own control plane, prints the scenario's result as JSON and exits non-zero when
the operator's RSS after the measured batch is more than 10% above the RSS after the
warm-up, or when a run was left behind.
"""

from __future__ import annotations

import json
import sys

from bench import scenarios
from bench.alone import run_alone

RSS_GROWTH_LIMIT = 0.10


def main() -> int:
    result, workdir = run_alone(
        "tandem-churn-", lambda bench, scale, _plane: scenarios.churn(bench, scale)
    )
    print(json.dumps(result, indent=1))
    print(f"Operator logs in {workdir}")
    return 0 if result["rss_growth"] <= RSS_GROWTH_LIMIT and not result["left_behind"] else 1


if __name__ == "__main__":
    sys.exit(main())
