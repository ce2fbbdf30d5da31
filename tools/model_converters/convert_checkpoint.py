"""Convert a MambaOut checkpoint (official release, timm, or an mmdet/mmseg model) to a plain backbone
state dict in the layout this repository uses, once and offline.

    python tools/model_converters/convert_checkpoint.py mambaout_tiny.pth mambaout_tiny_backbone.pth [--arch tiny]

The input is read with weights-only unpickling; with ``--arch`` the result is checked by loading it
strictly into that variant. Loading through ``init_cfg=dict(type='Pretrained', checkpoint=...)`` does
the same conversion on the fly, so converting is optional.
"""
import argparse

import torch

from backbones import MambaOut, load_pretrained, to_backbone_state_dict
from backbones.checkpoint import read_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='input checkpoint (.pth or .safetensors, local path or URL)')
    parser.add_argument('dst', help='output file (.pth, or .safetensors)')
    parser.add_argument('--arch', help='variant to check the result against, e.g. tiny')
    parser.add_argument('--prefix', help="sub-module prefix to extract (default: 'backbone.' when present)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    state, dropped = to_backbone_state_dict(read_checkpoint(args.src), args.prefix)
    state = {k: v.contiguous() for k, v in state.items()}
    if args.dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state, args.dst)
    else:
        torch.save(state, args.dst)
    print(f'wrote {len(state)} tensors to {args.dst} (dropped {len(dropped)} classifier keys)')
    if args.arch:
        load_pretrained(MambaOut(args.arch), args.dst)
        print(f'checked: loads strictly into MambaOut arch {args.arch!r}')


if __name__ == '__main__':
    main()
