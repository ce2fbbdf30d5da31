"""The embedded default segmentor really learns: after the toy schedule its mIoU, single-scale and with the
config's multi-scale + flip TTA, is far above an untrained model's. A file of its own, so that pytest-xdist can run
it beside the detector's trainings (tests/test_toy_training.py), whose helpers and thresholds it uses."""
import pytest
from conftest import untrained_checkpoint
from test_toy_training import SEG, SEG_MIN_MIOU, UNTRAINED_MAX_MIOU, evaluate, train_and_validate

from tools.misc.make_toy_data import make_toy_data

pytestmark = pytest.mark.slow  # an end-to-end training


@pytest.fixture(scope='module')
def toy_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp('toy_segmentation')
    make_toy_data(str(work / 'data' / 'toy'))  # the demo's default set
    return work


def test_segmentor_learns_single_and_multi_scale(toy_dir):
    work_dir = toy_dir / 'seg'
    single = train_and_validate(SEG, work_dir, toy_dir)
    multi = evaluate(SEG, (work_dir / 'last_checkpoint').read_text().strip(), work_dir, toy_dir, '--tta')
    untrained = evaluate(SEG, untrained_checkpoint(SEG, toy_dir / 'seg_untrained.pth'), toy_dir / 'seg_untrained', toy_dir)
    assert untrained['mIoU'] <= UNTRAINED_MAX_MIOU
    assert single['mIoU'] >= SEG_MIN_MIOU, single
    assert multi['mIoU'] >= SEG_MIN_MIOU, multi
