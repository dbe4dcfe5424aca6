"""H-Deformable-DETR on COCO-format data, built on :mod:`hybridmatch`.

An end-to-end example: a Deformable-DETR++ detector (two-stage, iterative box
refinement, mixed query selection, look-forward-twice) with H-DETR's hybrid
matching, in plain PyTorch. Run its modules from the repository root, e.g.
``python -m examples.detection.train --help``.

Modules: :mod:`.config` (``ModelConfig``), :mod:`.model` (``build_model``,
``postprocess``), :mod:`.backbone`, :mod:`.position_encoding`,
:mod:`.deformable_attention`, :mod:`.transformer`; data, criterion and training
live in their own modules (:mod:`.criterion`, :mod:`.data`, :mod:`.synthetic`,
:mod:`.evaluate`, :mod:`.nms`); :mod:`.task` is the spec that :mod:`examples.common` runs
(:mod:`.train`) and compares (:mod:`.main_job`, ``make demo``). Nothing is imported here, so
each module loads only what it needs.
"""
