"""An instance-segmentation DETR with hybrid matching, built on :mod:`hybridmatch`.

A Mask2Former / MaskDINO-style model on the detection example's H-Deformable-DETR: the
same backbone, deformable encoder, two-stage decoder and hybrid-branch query groups
(:mod:`examples.detection`), plus a light pixel decoder and a mask head: each query's
mask logits are its mask embedding dotted with per-pixel embeddings. Run its modules from
the repository root, e.g. ``python -m examples.segmentation.train --help``.

Modules: :mod:`.model` (``build_model``), :mod:`.criterion` (point-sampled mask losses and
costs, ``build_criterion``), :mod:`.data` (COCO instance masks, polygons and RLE),
:mod:`.synthetic` (a seeded dense shapes set with instance masks), :mod:`.evaluate`
(pycocotools ``segm`` AP), :mod:`.task` (the spec :mod:`examples.common` runs: :mod:`.train`
and :mod:`.main_job`, ``make segmentation-demo``). Nothing is imported here, so each module
loads only what it needs.
"""
