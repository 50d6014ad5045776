"""The architecture holds: imports run down the workflow, backends own their knowledge, decisions are values."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from quantkit.backends import REGISTRY, get_backend
from quantkit.problems import Problem, ProblemKind, missing_package

PACKAGE = Path(__file__).resolve().parent.parent / "quantkit"
ORDER = ["config", "planning", "load", "measure", "comparison", "show"]  # the workflow, upstream first


def _imports(path: Path) -> set[str]:
    """The quantkit modules a file imports (resolved to dotted names below quantkit), at any depth."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("quantkit"):
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("quantkit"))
    return out


def _step(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_workflow(path):
    here = _step("quantkit." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    for target in _imports(path):
        assert target != "quantkit" or path.name == "cli.py" or path.parent == PACKAGE / "models", (
            f"{path.relative_to(PACKAGE)} imports the package __init__"
        )
        there = _step(target)
        if here is None or there is None or here == there:
            continue
        lazy_report = here == "comparison" and path.name == "results.py" and target.startswith("quantkit.show.report")
        assert ORDER.index(there) <= ORDER.index(here) or lazy_report, (
            f"{path.relative_to(PACKAGE)} ({here}) imports {target} ({there}), which comes later in the workflow"
        )


def test_no_backend_name_is_tested_outside_backends():
    pattern = re.compile(
        r"""(backend|quant_backend)\s*(==|!=|\.startswith\()\s*["']|== ["'](gguf|quanto|torchao)["']"""
    )
    hits = []
    for path in PACKAGE.rglob("*.py"):
        # backends/ is where names belong; an exercise checker compares a learner's answer with the expected word
        if "backends" in path.parts or path.name == "exercises.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert hits == []


def test_module_names_do_not_shadow_the_public_functions():
    import importlib

    import quantkit

    for module in ("quantkit.planning", "quantkit.load", "quantkit.comparison", "quantkit.measure"):
        assert type(importlib.import_module(module)).__name__ == "module"
    assert callable(quantkit.plan) and callable(quantkit.compare) and callable(quantkit.load_pipeline)
    import quantkit.planning as p

    assert type(p).__name__ == "module" and p.plan is quantkit.plan


def test_no_file_is_longer_than_about_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 560 and p.name != "train.py"
    }
    assert long == {}


# -- decisions as values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "exception"),
    [
        (ProblemKind.MISSING_PACKAGE, ImportError),
        (ProblemKind.NEEDS_HARDWARE, RuntimeError),
        (ProblemKind.UNSUPPORTED, ValueError),
    ],
    ids=["missing-package", "hardware", "unsupported"],
)
def test_the_exception_follows_the_problem_kind(kind, exception):
    err = Problem(kind, "something is off", "do this instead").error("Cannot quantize 'x'")
    assert type(err) is exception
    assert str(err).startswith("Cannot quantize 'x': something is off.")


def test_an_install_command_travels_as_data():
    p = missing_package("gguf", "gguf>=0.10.0", "the 'gguf' backend")
    assert p.reason == "package 'gguf' is not installed" and p.install == "gguf>=0.10.0"
    assert p.pip_command == "pip install 'gguf>=0.10.0'"
    assert "Install it with: pip install 'gguf>=0.10.0'" in str(p.error("Cannot quantize 'transformer'"))


def test_torchao_int4_on_cpu_is_a_hardware_problem_with_alternatives():
    ao = get_backend("torchao")
    p = ao.device_problem(ao.normalize_kwargs({"quant_type": "int4wo"}), "cpu")
    assert p.kind is ProblemKind.NEEDS_HARDWARE and "needs a CUDA GPU" in p.reason and "quanto 'int4'" in p.fix
    assert ao.device_problem(ao.normalize_kwargs({"quant_type": "int8wo"}), "cpu") is None


# -- backend hooks -------------------------------------------------------------------------------------------


def test_which_backends_keep_the_models_fp32_modules():
    class Model:
        _keep_in_fp32_modules = ["wo"]

    keeps = {name: get_backend(name).keep_modules(Model(), {}) for name in REGISTRY}
    assert keeps == {
        "bitsandbytes_4bit": ["wo"],
        "bitsandbytes_8bit": ["wo"],
        "gguf": ["wo"],
        "quanto": [],
        "torchao": [],
    }
    q = get_backend("quanto")
    assert q.keep_modules(Model(), q.normalize_kwargs({"modules_to_not_convert": ["proj_out"]})) == ["proj_out"]


def test_what_diffusers_can_express_is_the_backends_word():
    flags = {
        name: (a.diffusers_simple_form, a.in_pipeline_config, a.diffusers_needs_cuda) for name, a in REGISTRY.items()
    }
    assert flags == {
        "bitsandbytes_4bit": (True, True, True),
        "bitsandbytes_8bit": (True, True, True),
        "gguf": (False, False, False),
        "quanto": (False, True, False),
        "torchao": (False, True, False),
    }


def test_native_configs_are_claimed_by_their_backend():
    from diffusers import BitsAndBytesConfig, GGUFQuantizationConfig, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    claims = {
        "nf4": BitsAndBytesConfig(load_in_4bit=True),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "gguf": GGUFQuantizationConfig(),
        "torchao": TorchAoConfig(Int8WeightOnlyConfig()),
    }
    owners = {key: [n for n, a in REGISTRY.items() if a.accepts_native(c)] for key, c in claims.items()}
    assert owners == {
        "nf4": ["bitsandbytes_4bit"],
        "int8": ["bitsandbytes_8bit"],
        "gguf": ["gguf"],
        "torchao": ["torchao"],
    }


def test_torchao_serializes_its_config_objects_itself():
    from torchao.quantization import Int8WeightOnlyConfig

    ao = get_backend("torchao")
    encoded = ao.encode_option("quant_type", Int8WeightOnlyConfig())
    assert set(encoded) == {"_torchao"}
    assert type(ao.decode_option("quant_type", encoded)).__name__ == "Int8WeightOnlyConfig"
    assert ao.encode_option("quant_type", "int8wo") == "int8wo"
    with pytest.raises(ValueError, match="neither a shortcut"):
        ao.decode_option("quant_type", {"not": "a config"})


def test_option_choices_come_from_the_adapter():
    assert get_backend("torchao").option_choices("quant_type") == (
        "int8wo",
        "int8dq",
        "float8wo",
        "float8dq",
        "int4wo",
    )
    assert get_backend("bitsandbytes_4bit").option_choices("bnb_4bit_compute_dtype") == (
        "float32",
        "float16",
        "bfloat16",
    )
    assert get_backend("quanto").option_choices("modules_to_not_convert") is None


def test_the_default_weights_hook_streams_safetensors(flux_dir):
    import quantkit as qk
    from quantkit.checkpoint import SafetensorsSource

    config = qk.PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
    )
    c = qk.plan(flux_dir, config, device="cpu").components["transformer"]
    weights = c.spec.adapter.weights(c, None, "cpu")
    assert isinstance(weights.source, SafetensorsSource) and weights.model is None and callable(weights.quantize)
    assert set(weights.source.keys()) >= {f"{layer}.weight" for layer in c.quantized_layers}
    weights.source.close()


def test_gguf_plans_its_own_loader(flux_dir):
    import quantkit as qk
    from quantkit.planning import Loader

    config = qk.PipelineQuantizationConfig(
        quant_backend="gguf", quant_kwargs={"quant_type": "Q8_0"}, components_to_quantize=["transformer", "vae"]
    )
    p = qk.plan(flux_dir, config, device="cpu")
    assert p.components["transformer"].loader is Loader.GGUF_WRITTEN and p.components["transformer"].supported
    vae = p.components["vae"]
    assert vae.issue.kind is ProblemKind.UNSUPPORTED and "Linear weights only" in vae.issue.reason


# -- the allocator option ---------------------------------------------------------------------------------------


def test_allocator_tuning_is_an_explicit_option(monkeypatch):
    from quantkit.load.allocator import DEFAULT, ENV, tuning_wanted

    monkeypatch.delenv(ENV, raising=False)
    assert tuning_wanted(None, "cpu") is DEFAULT
    assert tuning_wanted(False, "cpu") is False and tuning_wanted(True, "cpu") is True
    assert tuning_wanted(True, "cuda") is False  # CUDA loads never touch the host allocator
    monkeypatch.setenv(ENV, "0")
    assert tuning_wanted(None, "cpu") is False and tuning_wanted(True, "cpu") is True
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ValueError, match="QUANTKIT_MALLOC_TUNING='yes': set it to '1'"):
        tuning_wanted(None, "cpu")
    with pytest.raises(TypeError, match="malloc_tuning must be True, False or None"):
        tuning_wanted("no", "cpu")


def test_one_dtype_table_knows_unsigned_tensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    from quantkit.checkpoint import SafetensorsSource, read_header
    from quantkit.dtypes import code_bytes

    assert code_bytes("U16") == 2 and code_bytes("U32") == 4 and code_bytes("U64") == 8
    (tmp_path / "c").mkdir()
    import numpy as np

    tensors = {
        "a": torch.from_numpy(np.arange(6, dtype=np.uint16).reshape(2, 3)),
        "b": torch.from_numpy(np.arange(4, dtype=np.uint32)),
    }
    save_file(tensors, str(tmp_path / "c" / "model.safetensors"))
    assert read_header(tmp_path / "c" / "model.safetensors") == {"a": ("U16", (2, 3)), "b": ("U32", (4,))}
    source = SafetensorsSource(tmp_path / "c")
    assert (source.get("a").numpy() == tensors["a"].numpy()).all() and source.get("a").dtype == torch.uint16
    assert (source.get("b").numpy() == tensors["b"].numpy()).all() and source.get("b").dtype == torch.uint32
    with pytest.raises(ValueError, match="Unknown tensor dtype 'X9'"):
        code_bytes("X9", "somewhere")
