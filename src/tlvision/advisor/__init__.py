"""The advisor (`tlvision advise`, `--strategy auto`) and the probe: measuring a dataset on
train/ alone (measure, race, within the race's budget: budget), and the pure decision from the
evidence (decision).

Imports training and below; not report or serve.
"""
