"""`import quantkit` stays light: no torch, diffusers, transformers, backends or ipywidgets."""

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "optimum", "torchao", "gguf", "ipywidgets")


def test_import_quantkit_imports_nothing_heavy():
    code = (
        "import sys, quantkit; quantkit.EMBEDDED_PIPELINE; "
        "c = quantkit.PipelineQuantizationConfig(quant_backend='quanto', quant_kwargs={'weights': 'int8'}); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import quantkit (and building a config) imported: {out}"


def test_public_api_is_small_and_lazy():
    import quantkit

    assert 8 <= len(quantkit.__all__) <= 16
    for name in quantkit.__all__:
        assert getattr(quantkit, name) is not None
