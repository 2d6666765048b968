"""Active labelling: which unlabelled images a person should label next (`tlvision label-next`),
and the labelled ones copied into a dataset (`tlvision add-labels`).

selection: the pure choice on codes and probabilities (uncertainty times distance, k-center
greedy, near-duplicates skipped); pool: the codes and class probabilities of a folder of
images through the run's own body and head; outputs: the JSON, CSV and HTML contact sheet;
adding: the filled-in CSV copied into DATA/train/<class>/.

At the advisor's layer: imports training and below; not report, serve or advisor.
"""
