"""Classifying: the one classifier interface over torch and every export format that serves,
what can be classified, streaming predictions, test-time augmentation, scoring labelled images
(what evaluate and the report share) and class maps.

Imports export and below.
"""
