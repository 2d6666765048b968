"""The auditor behind `tlvision audit DATA` and `tlvision.audit()`: label issues, duplicates
and leakage, strangers and overlapping classes, all from the cached CNN codes
(and, for duplicates, small thumbnails). (Named auditor,
as advisor is, so that the package does not hide the `tlvision.audit` function.)

- collect: every image's codes (train, val and test), read once through the codes cache;
- labels: out-of-fold probabilities (K-fold logistic regression) and confident learning;
- duplicates: same bytes, and near copies by cosine similarity above a threshold calibrated on
  known transforms, searched block by block (never an n x n matrix);
- thumbnails: the second, pixel-level duplicate signal (small standardised thumbnails and their
  mirrored, halved and cropped views), for low-resolution images whose codes a halving moves;
- outliers: strangers, far in code space from every class; and the confused class pairs;
- result, page: audit.json, the fixes CSV and the self-contained audit.html.

Nothing in the dataset is moved, renamed, changed or deleted. Beside advisor, report and serve:
imports `training` and below, and none of them.
"""
