"""Where code runs: devices and their arithmetic, the cores this process may use and how idle
threads wait, torchrun's processes, ONNX written and run.

Imports only tlvision's top-level modules (config, errors): every other layer builds on it.
"""
