"""What the scripts in ``tools/`` and the tests share, importable without path tricks (installed with the
project): ``models`` (config -> model -> synthetic inputs), ``launch`` and ``data_check`` (what tools/train.py
and tools/test.py share), ``peak_memory`` (tools/benchmark.py), ``progress`` (tools/demo.py's quiet steps)."""
