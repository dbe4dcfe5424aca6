"""A keypoint DETR (PETR / ED-Pose style) trained with hybrid matching, on :mod:`examples.common`.

The second task adapter: the same backbone, deformable encoder and decoder as
:mod:`examples.detection` (imported, not copied), keypoint heads on every decoder layer,
a criterion whose matcher combines class, keypoint L1 and OKS costs
(:class:`hybridmatch.Matcher`), wrapped by :class:`hybridmatch.HybridCriterion`.

* :mod:`.skeleton`: the synthetic figures' joints, OKS sigmas, flip pairs (and COCO's);
* :mod:`.synthetic`: a seeded generator of articulated figures in COCO keypoints format;
* :mod:`.data`: :class:`~examples.pose.data.CocoKeypoints` (real ``person_keypoints_*.json`` too);
* :mod:`.model`: :class:`~examples.pose.model.PoseDETR` and :func:`~examples.pose.model.postprocess`;
* :mod:`.criterion`: :class:`~examples.pose.criterion.PoseCriterion`, :func:`~examples.pose.criterion.build_criterion`;
* :mod:`.evaluate`: pycocotools keypoint AP (``iouType="keypoints"``) with the same sigmas;
* :mod:`.task`: the spec :mod:`examples.common` runs: :mod:`.train` (``python -m
  examples.pose.train``, torchrun too) and :mod:`.main_job`, the one-to-one vs hybrid-branch
  comparison (``make pose-demo``).
"""
