"""Benchmarks of the operator against the local API server's own limits (``make bench``).

Every figure is reported as a ratio to what a minimal client achieves against the same
kube-apiserver in the same run, on the same cores, so results from different machines
can be compared. ``bench.run`` is the entry point; ``docs/benchmarks.md`` explains each
number.
"""
