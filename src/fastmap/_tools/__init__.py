"""Internal: benchmarks, demos and test rigs behind the `fastmap` CLI and the tests; not API."""
