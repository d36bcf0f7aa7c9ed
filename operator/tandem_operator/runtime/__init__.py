"""The operator\x27s runtime: store, work queue, reconciler, leader election, events, metrics."""
