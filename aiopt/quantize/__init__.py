"""`aiopt quantize`: reduced precision chosen by measurement (or a recipe forced), measured on
what was written. Light on purpose: importing a submodule must not load a runtime.

    config          the frozen config, its result, validation (one line per bad option)
    calibration     calibration and held-out data     prepare   FP32 export, ORT pre-processing, evaluation data
    recipes/        one module per runtime (onnxruntime, openvino, torch, weight_only) with its builders
    candidates      what a builder makes (Candidate, BuildContext)
    registry        name -> builder, the one registry (MEASURED: what the measured choice weighs)
    select          quality floor, interleaved timing, the choice   measured  the default path, by measurement
    forced          a named --method (forced_torch: --backend torch; against_parent: its measurement)
    write           the one ONNX writer of both paths   precision, sensitivity  what a graph holds, which layers hurt
    tensorrt        INT8 engines from any model: quantize, then export/tensorrt's build
    run             quantize_artifact: the entry the quantize step calls
"""
