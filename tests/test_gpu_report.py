"""The GPU report works before a GPU is there: ``tools/maintainers/gpu_report.sh --dry-run`` runs every step on CPU at tiny
sizes into a complete report; a failing step is recorded and makes the exit status non-zero; targets are judged
from benchmark.py's ratio lines; the Runner check reports non-finite losses and a collapsed loss scale."""
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import tool_env

from tools.maintainers import gpu_report, runner_check
from tools.maintainers.gpu_report import Step, build_steps, parse_ratios, run_report, target_rows
from tools.maintainers.runner_check import RunnerCheckResult, run_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'tools', 'maintainers', 'gpu_report.sh')
TOY_SEG = os.path.join(ROOT, 'configs', 'toy', 'upernet_mambaout_toy.py')
TOY_DET = os.path.join(ROOT, 'configs', 'toy', 'mask_rcnn_mambaout_toy.py')
NUMBER = r'[0-9]+\.[0-9]+'


def run_script(*args, timeout=1200):  # the dry run: about 4 minutes alone, twice that beside another test
    env = tool_env(PYTHON=sys.executable)
    return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_dry_run_writes_every_section_with_numbers(tmp_path):
    result = run_script('--dry-run', str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / 'report.md').read_text()
    steps = build_steps(dry_run=True)

    # The stack is installed here: the same decisions as on a GPU machine, and nothing installed.
    assert 'nothing to install' in report and 'mmcv: 2.1.0 with its compiled ops (cpu-ops) is installed' in report
    assert 'would run' not in report
    assert f'{len(steps)} of {len(steps)} steps run, 0 failed.' in report
    for index, step in enumerate(steps, 1):
        section = report.split(f'### {index}. {step.name}:')[1].split('\n### ')[0]
        assert step.command() in section
        assert re.search(r'^ok, \d+ s\.', section, re.MULTILINE), section[:2000]
        assert (tmp_path / 'logs' / f'{step.name}.log').is_file()
        if step.argv[0] == 'tools/analysis_tools/benchmark.py':  # three variants measured, ratios printed
            for variant in ('MambaOut-tiny (ours)', 'timm mambaout_tiny wrapper', 'ConvNeXt (convnext_tiny)'):
                assert re.search(rf'\| {re.escape(variant)} *\| {NUMBER} *\| {NUMBER}', section), variant
            ratios = parse_ratios(section)
            assert set(ratios) == {'timm wrapper', 'ConvNeXt'}
            assert all(math.isfinite(v) and v > 0 for parts in ratios.values() for v in parts.values())
        else:  # the Runner check: its table, with finite losses and a memory figure
            assert re.search(rf'\| loss first -> last \| {NUMBER} -> {NUMBER} \|', section), section
            assert re.search(r'\| iterations \| 2 \|', section)
            assert re.search(r'\| peak memory \(MiB\) \| [0-9]+ \|', section)
            assert '| result | PASS |' in section
            assert list((tmp_path / 'runner_check' / step.name).glob('*/*.log'))  # the Runner's own log
    targets = report.split('## Targets')[1].split('\n## ')[0]
    rows = [line for line in targets.splitlines() if line.startswith('| ') and 'verdict' not in line]
    assert len(rows) == sum(len(step.targets) for step in steps) + 2  # + the two Runner checks
    for row in rows:
        assert re.search(rf'\| {NUMBER} \(|\| see runner-', row), row  # every target has its number
        assert 'n/a (dry run on CPU)' in row or row.endswith('| PASS |'), row


def test_failing_step_is_recorded_and_the_exit_status_is_nonzero(tmp_path, capsys):
    steps = [Step('first', 'prints', ['-c', 'print("measured")']),
             Step('broken', 'fails', ['-c', 'import sys; print("half done"); sys.exit("deliberate failure")']),
             Step('after', 'still runs', ['-c', 'print("after the failure")'])]
    assert run_report(steps, str(tmp_path), dry_run=False) == 1
    report = (tmp_path / 'report.md').read_text()
    assert '3 of 3 steps run, 1 failed: broken.' in report
    broken = report.split('### 2. broken:')[1].split('\n### ')[0]
    assert 'FAILED (exit status 1)' in broken and 'deliberate failure' in broken and 'half done' in broken
    assert 'after the failure' in report.split('### 3. after:')[1]
    assert 'deliberate failure' in (tmp_path / 'logs' / 'broken.log').read_text()
    assert 'failed steps: broken' in capsys.readouterr().out

    assert run_report(steps[:1], str(tmp_path / 'ok'), dry_run=False) == 0


def test_unknown_step_name_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_report.main(['--steps', 'backbone,nope', 'out'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'gpu_report.py: error: --steps: unknown step(s) nope' in err and 'runner-det' in err


@pytest.mark.parametrize('args, message', [
    (['--bogus'], 'unknown option --bogus'),
    (['--download-wheels', '/tmp/x', '--python-version', 'three'], "--python-version must look like 3.12"),
    (['--wheels', '/nonexistent/wheels', '/tmp/out'], '--wheels /nonexistent/wheels: no such directory'),
    (['a', 'b'], 'one OUT_DIR only'),
])
def test_bad_arguments_give_one_error(args, message, tmp_path):
    result = run_script(*args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and 'Traceback' not in result.stderr


def test_targets_are_judged_from_the_ratio_lines():
    output = ('ratio ours / timm wrapper: fwd+bwd 0.700, peak memory 0.600, inference 0.9  (< 1: ours is faster)\n'
              'ratio ours / ConvNeXt: fwd+bwd 1.000, peak memory nan, inference 0.8  (< 1: ours is faster)\n')
    backbone, compiled = build_steps(dry_run=False)[:2]
    for step in (backbone, compiled):
        step.output, step.returncode = output, 0
    verdicts = {row[0]: (row[1], row[2]) for row in target_rows([backbone, compiled], dry_run=False)}
    assert verdicts['backbone fwd+bwd time <= 0.75x timm eager'] == ('0.700 (backbone)', 'PASS')
    assert verdicts['backbone peak memory <= 0.55x timm eager'] == ('0.600 (backbone)', 'FAIL')
    assert verdicts['backbone fwd+bwd time <= ConvNeXt-T'] == ('1.000 (backbone)', 'PASS')  # <= holds at 1
    assert verdicts['backbone peak memory <= ConvNeXt-T'][1] == 'not measured'  # nan
    assert verdicts['compiled backbone fwd+bwd time < timm compiled'][1] == 'PASS'
    assert verdicts['compiled backbone peak memory <= 0.7x timm compiled'] == ('0.600 (backbone-compiled)', 'PASS')
    compiled.output = output.replace('fwd+bwd 0.700', 'fwd+bwd 1.000')
    rows = target_rows([compiled], dry_run=False)
    assert rows[0][2] == 'FAIL'  # "below" is strict
    assert target_rows([compiled], dry_run=True)[0][2] == 'n/a (dry run on CPU)'


def test_loss_scale_collapse_and_non_finite_losses_are_problems():
    healthy = RunnerCheckResult('c.py', 'cuda', 'AMP float16', 2, (64, 64), losses=[{'loss': 2.0}] * 30,
                                loss_scales=[2.0 ** (16 - min(i, 6)) for i in range(30)], skipped_steps=6)
    assert healthy.problems() == []
    assert '| result | PASS |' in healthy.table()
    collapsed = RunnerCheckResult('c.py', 'cuda', 'AMP float16', 2, (64, 64), losses=[{'loss': 2.0}] * 30,
                                  loss_scales=[2.0 ** (15 - i) for i in range(30)], skipped_steps=30)
    assert any('loss scale collapsed' in problem and '30 of 30 steps' in problem for problem in collapsed.problems())
    nan = RunnerCheckResult('c.py', 'cpu', 'fp32', 2, (64, 64),
                            losses=[{'loss': 1.0}, {'loss': math.nan, 'loss_cls': math.inf}])
    assert nan.problems() == ['iteration 2: non-finite loss loss=nan, loss_cls=inf']
    assert 'FAIL: iteration 2' in nan.table()


@pytest.mark.slow
@pytest.mark.parametrize('config', [TOY_DET, TOY_SEG])  # an epoch-based and an iteration-based train loop
def test_runner_check_trains_the_config_for_the_asked_iterations(config, tmp_path):
    result = run_check(config, iters=3, work_dir=str(tmp_path), batch_size=2, shape=(64, 96))
    assert len(result.losses) == len(result.iter_seconds) == 3
    assert result.problems() == []
    assert all(math.isfinite(value) for losses in result.losses for value in losses.values())
    assert 'loss' in result.losses[0] and len(result.losses[0]) > 2  # the total and each head's losses
    assert result.shape == (64, 96) and result.batch_size == 2


@pytest.mark.slow
def test_runner_check_reports_a_diverging_loss(tmp_path, capsys):
    # A loss weight of 1e39 overflows float32: the decode head's loss is inf from the first iteration on.
    status = runner_check.main([TOY_SEG, '--iters', '2', '--batch-size', '2', '--shape', '64', '64',
                                '--work-dir', str(tmp_path), '--cfg-options',
                                'model.decode_head.loss_decode.loss_weight=1e39'])
    out = capsys.readouterr().out
    assert status == 1
    assert 'FAIL: iteration 1: non-finite loss' in out and 'decode.loss_ce=inf' in out


@pytest.mark.parametrize('args, message', [
    (['--iters', '0'], '--iters must be >= 1, got 0'),
    (['--shape', '16', '64'], '--shape must be >= 32, got 16 64'),
    (['--batch-size', '0'], '--batch-size must be >= 1, got 0'),
])
def test_runner_check_refuses_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner_check.parse_args([TOY_SEG, *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
