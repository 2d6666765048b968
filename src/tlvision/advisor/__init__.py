"""The advisor (`tlvision advise`, `--strategy auto`) and the probe: measuring a dataset on
train/ alone (measure, race), and the pure decision from the evidence (decision).

Imports training and below; not report or serve.
"""
