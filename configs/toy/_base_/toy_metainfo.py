# Classes and palette of the embedded toy dataset: the one definition, read by both toy configs (as a second
# `_base_`, so only this new name is defined here) and by tools/misc/make_toy_data.py, which writes the COCO
# categories (ids 1..3) and the ADE-layout labels (1..3, 0 = background, ignored via reduce_zero_label) in
# this order.
toy_metainfo = dict(classes=('square', 'circle', 'triangle'),
                    palette=[(220, 50, 50), (50, 180, 70), (60, 100, 230)])
