"""``python -m bench`` (``make bench``): run every benchmark module's ``main()`` in turn."""

import importlib
import pkgutil

import bench

for module in sorted(m.name for m in pkgutil.iter_modules(bench.__path__)
                     if m.name.startswith("bench_")):
    print(f"\n=== {module} ===", flush=True)
    importlib.import_module(f"bench.{module}").main([])
