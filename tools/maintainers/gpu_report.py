"""The measuring half of ``tools/maintainers/gpu_report.sh``: runs the report's steps and writes OUT_DIR/report.md.

    python tools/maintainers/gpu_report.py [--dry-run] [--steps NAME,...] [--install-log FILE] OUT_DIR

Needs the stack installed (``gpu_report.sh`` installs it first, then calls this). Exits 1 when a step failed.
Below: the steps, how each one is run and recorded, and the markdown report with the targets judged from the
measured ratios.

Each step is a command of ``tools/analysis_tools/benchmark.py`` or ``tools/maintainers/runner_check.py``, run from the repository root
with this Python. Its output goes into the report under the exact command; a step that fails is recorded with
its last lines and the next step runs, so that one failure does not waste the GPU's time. The report is
rewritten after every step: a run cut short still leaves what was measured.
"""
import argparse
import datetime
import importlib.metadata as metadata
import math
import os
import os.path as osp
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch


ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET_CONFIG = 'configs/mask_rcnn_mambaout_t_1x.py'
SEG_CONFIG = 'configs/upernet_mambaout_t_160k_ade20k_512.py'
DRY_RUN_ROI_SAMPLES = 'model.train_cfg.rcnn.sampler.num=64'
STEP_TIMEOUT_S = 1800  # a hung step must not eat the GPU's whole time
FAILED_TAIL_LINES = 25
PACKAGES = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'timm', 'numpy')


@dataclass(frozen=True)
class Target:
    """A target of the report on a ratio that ``tools/analysis_tools/benchmark.py --compare`` prints
    (``ratio ours / OTHER: METRIC VALUE, ...``): ``VALUE <= bound`` (``< bound`` when ``strict``)."""
    text: str
    other: str  # 'timm wrapper' or 'ConvNeXt'
    metric: str  # 'fwd+bwd', 'train step' or 'peak memory'
    bound: float
    strict: bool = False

    def judge(self, ratios: Dict[str, Dict[str, float]]) -> Optional[bool]:
        value = ratios.get(self.other, {}).get(self.metric)
        if value is None or math.isnan(value):
            return None
        return value < self.bound if self.strict else value <= self.bound


@dataclass
class Step:
    """One command of the report: ``argv`` runs with this Python from the repository root."""
    name: str
    title: str
    argv: List[str]
    targets: List[Target] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)  # set for this step, shown in its command
    note: str = ''
    # filled in by run_step
    returncode: Optional[int] = None
    seconds: float = 0.
    output: str = ''
    error_tail: str = ''

    def command(self) -> str:
        env = ' '.join(f'{key}={shlex.quote(value)}' for key, value in self.env.items())
        return ' '.join(filter(None, [env, 'python', shlex.join(self.argv)]))

    @property
    def failed(self) -> bool:
        return self.returncode not in (None, 0)


def _backbone_targets():
    return [Target('backbone fwd+bwd time <= 0.75x timm eager', 'timm wrapper', 'fwd+bwd', 0.75),
            Target('backbone peak memory <= 0.55x timm eager', 'timm wrapper', 'peak memory', 0.55),
            Target('backbone fwd+bwd time <= ConvNeXt-T', 'ConvNeXt', 'fwd+bwd', 1.0),
            Target('backbone peak memory <= ConvNeXt-T', 'ConvNeXt', 'peak memory', 1.0)]


def _model_targets(model):
    return [Target(f'{model} train step time <= ConvNeXt-T', 'ConvNeXt', 'train step', 1.0),
            Target(f'{model} train step peak memory <= ConvNeXt-T', 'ConvNeXt', 'peak memory', 1.0),
            Target(f'{model} train step peak memory <= 0.8x timm wrapper', 'timm wrapper', 'peak memory', 0.8)]


def build_steps(dry_run: bool) -> List[Step]:
    """The report's steps: full sizes on CUDA, or (``dry_run``) the same commands on CPU at tiny sizes."""
    cpu = ['--device', 'cpu'] if dry_run else []
    if dry_run:
        bench_tiny = [*cpu, '--iters', '1', '--warmup', '0']
        det_shape = seg_shape = ['--shape', '64', '96']
        runner_tiny = ['--iters', '2', '--batch-size', '2', '--shape', '64', '96']
        seg_batch = '2'
    else:
        bench_tiny, runner_tiny = [], []
        det_shape, seg_shape, seg_batch = ['--shape', '800', '1344'], ['--shape', '512', '512'], '4'
    bench = ['tools/analysis_tools/benchmark.py']
    fp16 = ['--compare', '--amp']
    steps = [
        Step('backbone', 'Backbone fwd+bwd, batch 2, FP16 AMP: ours vs timm eager vs ConvNeXt-T',
             bench + [DET_CONFIG, '--backbone-only', *fp16, '--batch-size', '2', *det_shape, *bench_tiny],
             _backbone_targets()),
        Step('backbone-compiled', 'Backbone fwd+bwd, batch 2, FP16 AMP, torch.compile: ours vs timm vs ConvNeXt-T',
             bench + [DET_CONFIG, '--backbone-only', *fp16, '--compile', '--batch-size', '2', *det_shape,
                      *bench_tiny],
             [Target('compiled backbone fwd+bwd time < timm compiled', 'timm wrapper', 'fwd+bwd', 1.0, strict=True),
              Target('compiled backbone peak memory <= 0.7x timm compiled', 'timm wrapper', 'peak memory', 0.7)]),
        Step('mask-rcnn', 'Mask R-CNN train step, batch 2, FP16 AMP: ours vs timm wrapper vs ConvNeXt-T',
             bench + [DET_CONFIG, *fp16, '--batch-size', '2', *det_shape, *bench_tiny], _model_targets('Mask R-CNN')),
        Step('upernet', f'UperNet train step, batch {seg_batch}, FP16 AMP: ours vs timm wrapper vs ConvNeXt-T',
             bench + [SEG_CONFIG, *fp16, '--batch-size', seg_batch, *seg_shape, *bench_tiny],
             _model_targets('UperNet')),
        # The same number on any device (CPU applies CUDA's autocast rules), so the dry run measures it exactly.
        Step('saved-activations', 'Backbone activations kept for backward, batch 2, FP16 autocast: ours vs timm vs '
                                  'ConvNeXt-T',
             bench + [DET_CONFIG, '--backbone-only', '--compare', '--saved-activations', '--batch-size', '2',
                      *det_shape, *cpu],  # it times nothing: no --iters
             [Target('backbone saved activations <= 0.55x timm', 'timm wrapper', 'saved activations', 0.55),
              Target('backbone saved activations <= ConvNeXt-T', 'ConvNeXt', 'saved activations', 1.0)]),
        Step('runner-det', 'Mask R-CNN: real FP16 iterations through the Runner on synthetic full-size data',
             ['tools/maintainers/runner_check.py', DET_CONFIG, *(runner_tiny or ['--iters', '30'])]),
        Step('runner-seg', 'UperNet: real FP16 iterations through the Runner on synthetic full-size data',
             ['tools/maintainers/runner_check.py', SEG_CONFIG, *(runner_tiny or ['--iters', '30'])]),
    ]
    if dry_run:
        for step in steps:
            step.env['CUDA_VISIBLE_DEVICES'] = ''  # CPU, also on a machine with a GPU
        named = {step.name: step for step in steps}
        compiled, mask_rcnn, upernet, runner_det = (named[name] for name in ('backbone-compiled', 'mask-rcnn',
                                                                              'upernet', 'runner-det'))
        compiled.env['TORCHDYNAMO_DISABLE'] = '1'
        compiled.argv.remove('--amp')
        compiled.note = ('dry run: torch.compile is a no-op here (TORCHDYNAMO_DISABLE=1); compiling three backbones '
                         'with inductor on CPU takes minutes. fp32: the step above runs the same backbones under '
                         'autocast, which costs seconds per step on a CPU without bfloat16 units')
        mask_rcnn.argv.remove('--amp')
        mask_rcnn.note = ('dry run: fp32; `--amp` on CPU is bfloat16 autocast, and mmcv 2.1.0\'s CPU NMS (in the '
                          'RPN) has no bfloat16 kernel ("expected scalar type Float but found BFloat16")')
        # The RoI heads on 512 sampled RoIs per image take most of a tiny Mask R-CNN step on CPU (4.5 of 7.6 s at
        # 64x96, batch 2, one thread, whatever the image size): 64 of them in the dry run.
        fewer_rois = '64 RoIs sampled per image instead of the recipe\'s 512 (`--cfg-options`)'
        for step in (mask_rcnn, runner_det):
            step.argv += ['--cfg-options', DRY_RUN_ROI_SAMPLES]
        mask_rcnn.note += f'; {fewer_rois}'
        runner_det.note = f'dry run: {fewer_rois}'
        upernet.argv.remove('--amp')
        upernet.note = ('dry run: fp32; bfloat16 autocast on a CPU without bfloat16 matrix units makes the '
                        '512-channel UperNet head five times slower (167 s instead of 30 s on 2 cores)')
    return steps


def select_steps(steps: List[Step], names: Optional[str]) -> List[Step]:
    """The steps named in ``names`` (comma-separated), in the report's order; all when ``names`` is empty.

    Raises:
        ValueError: a name that is not a step's.
    """
    if not names:
        return steps
    wanted = [name.strip() for name in names.split(',') if name.strip()]
    unknown = sorted(set(wanted) - {step.name for step in steps})
    if unknown:
        raise ValueError(f'unknown step(s) {", ".join(unknown)}; the steps are: '
                         f'{", ".join(step.name for step in steps)}')
    return [step for step in steps if step.name in wanted]


def run_step(step: Step, out_dir: str, python: str = sys.executable) -> Step:
    """Run ``step`` from the repository root, its stdout kept for the report, stdout and stderr together in
    ``OUT_DIR/logs/NAME.log``, and (for a run of tools/maintainers/runner_check.py) its Runner logs under
    ``OUT_DIR/runner_check/NAME``."""
    argv = list(step.argv)
    if argv[0] == 'tools/maintainers/runner_check.py' and '--work-dir' not in argv:
        argv += ['--work-dir', osp.join(out_dir, 'runner_check', step.name)]
    env = dict(os.environ, **step.env)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')]))
    start = time.perf_counter()
    try:
        done = subprocess.run([python, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=STEP_TIMEOUT_S)
        step.returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        step.returncode = 124
        stdout = (err.stdout or b'').decode() if isinstance(err.stdout, bytes) else (err.stdout or '')
        stderr = f'timed out after {STEP_TIMEOUT_S} s'
    step.seconds = time.perf_counter() - start
    step.output = stdout.rstrip()
    os.makedirs(osp.join(out_dir, 'logs'), exist_ok=True)
    with open(osp.join(out_dir, 'logs', f'{step.name}.log'), 'w') as log:
        log.write(f'$ {step.command()}\n\n{stdout}\n--- stderr ---\n{stderr}\n')
    if step.failed:
        step.error_tail = '\n'.join((stdout + '\n' + stderr).strip().splitlines()[-FAILED_TAIL_LINES:])
    return step


_RATIO_LINE = re.compile(r'^ratio ours / (?P<other>[^:]+): (?P<parts>.*?)\s*(\(.*)?$', re.MULTILINE)
_RATIO_PART = re.compile(r'(?P<metric>[A-Za-z][A-Za-z +-]*?) (?P<value>nan|[0-9.]+(?:e[-+]?[0-9]+)?)')


def parse_ratios(output: str) -> Dict[str, Dict[str, float]]:
    """``{'timm wrapper': {'fwd+bwd': 0.71, 'peak memory': 0.5, ...}, 'ConvNeXt': {...}}`` from the
    ``ratio ours / ...`` lines that ``tools/analysis_tools/benchmark.py --compare`` prints."""
    ratios = {}
    for line in _RATIO_LINE.finditer(output):
        parts = {match['metric'].strip(): float(match['value'])
                 for match in _RATIO_PART.finditer(line['parts'])}
        ratios[line['other'].strip()] = parts
    return ratios


def target_rows(steps: List[Step], dry_run: bool) -> List[List[str]]:
    """[target, measured ratio, verdict] for every target of the steps run so far."""
    rows = []
    for step in steps:
        ratios = parse_ratios(step.output)
        for target in step.targets:
            value = ratios.get(target.other, {}).get(target.metric)
            measured = 'not measured' if value is None else f'{value:.3f}'
            verdict = target.judge(ratios)
            if step.returncode is None:
                verdict_text = 'not run'
            elif dry_run:
                verdict_text = 'n/a (dry run on CPU)'
            else:
                verdict_text = {True: 'PASS', False: 'FAIL', None: 'not measured'}[verdict]
            rows.append([target.text, f'{measured} ({step.name})', verdict_text])
        if step.argv[0] == 'tools/maintainers/runner_check.py':
            verdict_text = ('not run' if step.returncode is None else
                            'PASS' if step.returncode == 0 else 'FAIL')
            rows.append([f'{step.name}: every loss finite, AMP loss scale >= 1', f'see {step.name}', verdict_text])
    return rows


def environment(dry_run: bool) -> List[str]:
    """Lines about the machine and the software."""
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f'{package} {metadata.version(package)}')
        except metadata.PackageNotFoundError:
            versions.append(f'{package} (not installed)')
    if torch.cuda.is_available() and not dry_run:
        device = f'{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})'
    else:
        device = f'CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or 'unknown'
    except (OSError, subprocess.TimeoutExpired):
        commit = 'unknown'
    return [f'- date: {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}',
            f'- host: {platform.node()}',
            f'- device: {device}',
            f'- Python {platform.python_version()} ({sys.executable})',
            f'- {", ".join(versions)}',
            f'- repository commit: {commit}']


def render(steps: List[Step], dry_run: bool, install_log: str = '') -> str:
    """The report as markdown."""
    mode = ('DRY RUN: CPU, tiny sizes. The numbers test this script, not the targets.' if dry_run else
            'CUDA, full sizes.')
    done = [step for step in steps if step.returncode is not None]
    failed = [step for step in done if step.failed]
    lines = ['# MambaOut GPU report', '', mode, '', *environment(dry_run), '']
    lines += ['## Summary', '',
              f'{len(done)} of {len(steps)} steps run, {len(failed)} failed'
              + (f': {", ".join(step.name for step in failed)}' if failed else '') + '.', '']
    lines += ['## Targets', '', '| target | measured ratio (ours / other) | verdict |', '|---|---|---|']
    lines += [f'| {" | ".join(row)} |' for row in target_rows(steps, dry_run)]
    lines += ['', 'Ratios from `ratio ours / ...` lines of tools/analysis_tools/benchmark.py below (< 1: ours is faster / '
              'smaller).', '']
    if install_log:
        lines += ['## Set-up', '', '```', install_log.strip(), '```', '']
    lines += ['## Steps', '']
    for index, step in enumerate(steps, 1):
        lines += [f'### {index}. {step.name}: {step.title}', '', '```bash', step.command(), '```', '']
        if step.note:
            lines += [f'Note: {step.note}', '']
        if step.returncode is None:
            lines += ['Not run yet.', '']
            continue
        status = 'ok' if not step.failed else f'FAILED (exit status {step.returncode})'
        lines += [f'{status}, {step.seconds:.0f} s. Full output: `logs/{step.name}.log`.', '']
        if step.output:
            lines += ['```', step.output, '```', '']
        if step.failed:
            lines += ['Last lines:', '', '```', step.error_tail, '```', '']
    return '\n'.join(lines)


def run_report(steps: List[Step], out_dir: str, dry_run: bool, install_log: str = '',
               python: str = sys.executable) -> int:
    """Run ``steps`` one after the other into ``OUT_DIR/report.md``; 1 if any failed, else 0."""
    os.makedirs(out_dir, exist_ok=True)
    report = osp.join(out_dir, 'report.md')
    for index, step in enumerate(steps, 1):
        print(f'[gpu_report] step {index}/{len(steps)} {step.name}: {step.command()}', flush=True)
        run_step(step, out_dir, python)
        print(f'[gpu_report]   {"FAILED" if step.failed else "ok"} in {step.seconds:.0f} s', flush=True)
        with open(report, 'w') as f:
            f.write(render(steps, dry_run, install_log))
    failed = [step.name for step in steps if step.failed]
    print(f'[gpu_report] report: {report}' + (f'; failed steps: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


PROG = 'gpu_report.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir', help='where report.md, logs/ and the Runner logs go')
    parser.add_argument('--dry-run', action='store_true', help='the same steps on CPU at tiny sizes')
    parser.add_argument('--steps', help='comma-separated step names to run (default: all): ' +
                        ', '.join(step.name for step in build_steps(dry_run=False)))
    parser.add_argument('--install-log', help='what the installation did, for the report\'s set-up section')
    args = parser.parse_args(argv)
    try:
        args.steps = select_steps(build_steps(args.dry_run), args.steps)
    except ValueError as err:
        parser.error(f'--steps: {err}')
    if args.install_log and not osp.isfile(args.install_log):
        parser.error(f'--install-log: no such file: {args.install_log}')
    return args


def main(argv=None):
    args = parse_args(argv)
    install_log = open(args.install_log).read() if args.install_log else ''
    return run_report(args.steps, args.out_dir, args.dry_run, install_log)


if __name__ == '__main__':
    sys.exit(main())
