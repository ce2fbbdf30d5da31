"""What the scripts in ``tools/`` and the tests share, importable without path tricks (installed with the
project): ``models`` (config -> model -> synthetic inputs), ``launch`` and ``data_check`` (what tools/train.py
and tools/test.py share), ``peak_memory`` (tools/benchmark.py), ``runner_check`` (tools/runner_check.py),
``gpu_report`` (the steps and report of tools/gpu_report.sh), ``onnx_export`` (tools/export_onnx.py) and
``progress`` (tools/demo.py's quiet steps)."""
