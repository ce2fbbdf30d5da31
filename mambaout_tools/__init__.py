"""What several scripts in ``tools/`` and the tests share, importable without path tricks (installed with the
project): ``models`` (config -> model -> synthetic inputs), ``launch`` and ``data_check`` (what tools/train.py,
tools/test.py and the other tools that load a config or checkpoint share), ``peak_memory`` (benchmark and the
Runner check), ``saved_activations`` (benchmark and its tests), ``progress`` (tools/misc/demo.py's quiet
steps, and their tests) and ``visualize`` (the prediction and its picture, tools/misc/image_demo.py's and
tools/misc/web_demo.py's). A module that only one tool uses lives in that tool's file."""
