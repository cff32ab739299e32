"""`aiopt quantize`: reduced precision chosen by measurement (or a recipe forced), measured on
what was written. Light on purpose: importing a submodule must not load a runtime.

    config        the frozen config and its validation (one line per bad option)
    calibration   calibration and held-out data          prepare   FP32 export, ORT pre-processing, evaluation data
    recipes/      one module per runtime (onnxruntime, openvino, torch, weight_only)
    candidates    what a recipe builds (Candidate, BuildContext); registry: name -> builder, the one registry
    select        quality floor, interleaved timing, the choice  measured  the default path, by measurement
    forced        a named --method                       write     the one ONNX writer for both
    run           quantize_artifact: the entry the step calls
"""
