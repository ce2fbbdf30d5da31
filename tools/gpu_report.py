"""The measuring half of ``tools/gpu_report.sh``: runs the report's steps and writes OUT_DIR/report.md.

    python tools/gpu_report.py [--dry-run] [--steps NAME,...] [--install-log FILE] OUT_DIR

Needs the stack installed (``tools/gpu_report.sh`` installs it first, then calls this). The steps and the
targets they are judged against are in ``mambaout_tools/gpu_report.py``. Exits 1 when a step failed.
"""
import argparse
import os.path as osp
import sys

from mambaout_tools.gpu_report import build_steps, run_report, select_steps

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
