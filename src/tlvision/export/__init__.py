"""A trained run as a file that is proven to match: the export-format registry (one module per
format in export/formats/), the parity check, the exporter and int8 quantisation.

Imports runs and below.
"""
