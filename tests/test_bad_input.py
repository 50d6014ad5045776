"""Bad input, everywhere: refused before work starts, with a message that names what was given and the fix.

One section per place input comes from: arguments (config, plan, load, footprint), files on disk (the pipeline
folder, quantkit's saved folders), the GGUF cache, compare and its command line, the widgets' setters. Each test
pins one finding of issue 12 (see docs/errors.md for the vocabulary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import quantkit as qk
from quantkit import PipelineQuantizationConfig, QuantSpec

QUANTO = PipelineQuantizationConfig(
    quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"}, components_to_quantize=["transformer"]
)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "pipe"
    shutil.copytree(folder, out)
    return out


# -- config: types, ranges, finite numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ({"quant_mapping": ["transformer"]}, TypeError, "quant_mapping must be a dict {component: "),
        ({"quant_mapping": "transformer"}, TypeError, "got str 'transformer'"),
        ({"quant_mapping": {"transformer": ["quanto"]}}, TypeError, "quant_mapping['transformer'] must be a dict"),
        (
            {"quant_mapping": {"transformer": {"weights_dtype": "int8"}}},
            ValueError,
            "quant_mapping['transformer'] needs a 'backend' key",
        ),
        ({"quant_mapping": {3: {"backend": "quanto"}}}, TypeError, "component names in quant_mapping must be strings"),
        (
            {"quant_backend": "quanto", "quant_kwargs": ["weights_dtype", "int8"]},
            TypeError,
            "quant_kwargs must be a dict of the backend's options",
        ),
        ({"quant_backend": "quanto", "quant_kwargs": "int8"}, TypeError, "got str 'int8'"),
        (
            {"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"}, "components_to_quantize": []},
            ValueError,
            "components_to_quantize=[] names no component",
        ),
        (
            {"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"}, "components_to_quantize": [1]},
            TypeError,
            "components_to_quantize must be a list of component names",
        ),
        (
            {"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": 8}},
            TypeError,
            "takes one of 'int8', 'int4', 'int2' or 'float8', got int 8",
        ),
        (
            {"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"llm_int8_threshold": float("nan")}},
            ValueError,
            "llm_int8_threshold=nan is not a finite number",
        ),
        (
            {"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"llm_int8_threshold": float("inf")}},
            ValueError,
            "llm_int8_threshold=inf is not a finite number",
        ),
        (
            {"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {"load_in_4bit": "yes"}},
            ValueError,
            "load_in_4bit='yes' contradicts",
        ),
        ({"quant_backend": "gguf", "quant_kwargs": {"gguf_file": 3}}, TypeError, "takes a file path (str or Path)"),
        (
            {"quant_backend": "quanto", "quant_kwargs": {"modules_to_not_convert": [""]}},
            ValueError,
            "empty module name",
        ),
        (["quant_backend", "quanto"], TypeError, "A PipelineQuantizationConfig dict must be a dict"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_from_dict_refuses_wrong_types_with_the_fix(data, error, words):
    with pytest.raises(error) as info:
        PipelineQuantizationConfig.from_dict(data)
    assert words in str(info.value)


def test_from_json_names_bad_json_and_refuses_nan():
    with pytest.raises(ValueError, match=r"Not valid JSON \(Expecting"):
        PipelineQuantizationConfig.from_json('{"quant_backend": ')
    with pytest.raises(TypeError, match="from_json takes JSON text"):
        PipelineQuantizationConfig.from_json({"quant_backend": "quanto"})
    with pytest.raises(ValueError, match="not a finite number"):  # Python's json reads NaN; the option refuses it
        PipelineQuantizationConfig.from_json(
            '{"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"llm_int8_threshold": NaN}}'
        )


def test_to_json_is_standard_json_even_with_path_values(tmp_path):
    spec = QuantSpec("gguf", quant_type="Q8_0", gguf_file=tmp_path / "x.gguf")  # a Path: stored as its text
    config = PipelineQuantizationConfig(quant_mapping={"transformer": spec})
    assert json.loads(config.to_json())["quant_mapping"]["transformer"]["gguf_file"] == str(tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="components_to_quantize must be a list of component names"):
        PipelineQuantizationConfig(
            quant_backend="quanto",
            quant_kwargs={"weights_dtype": "int8"},
            components_to_quantize=[Path("transformer")],
        )


def test_quant_spec_and_kwargs_must_be_dicts():
    with pytest.raises(TypeError, match="The options of backend 'quanto' must be a dict"):
        qk.backends.get_backend("quanto").normalize_kwargs(["weights_dtype"])
    with pytest.raises(TypeError, match="quant_backend must be a string"):
        QuantSpec(3)
    with pytest.raises(TypeError, match="Option names of backend 'quanto' are strings"):
        qk.backends.get_backend("quanto").normalize_kwargs({1: "int8"})


def test_install_hints_offer_every_backend_at_once():
    from quantkit.backends import get_backend
    from quantkit.errors import require_package

    with pytest.raises(ImportError) as info:
        require_package(
            "quantkit_no_such_package", "optimum-quanto>=0.2.7", "The 'quanto' backend", "quantkit[backends]"
        )
    assert (
        "Install it with: pip install 'optimum-quanto>=0.2.7' (or every backend: pip install 'quantkit[backends]')."
    ) in str(info.value)
    assert info.value.name == "quantkit_no_such_package"

    class Missing(get_backend("quanto")):
        module = "quantkit_no_such_package"

    problem = Missing.package_problem()
    assert problem.extra == "quantkit[backends]" and problem.module == "quantkit_no_such_package"
    err = problem.error("Cannot quantize 'transformer'")
    assert type(err) is ImportError and err.problem is problem and err.name == "quantkit_no_such_package"
    assert "(or every backend: pip install 'quantkit[backends]')" in str(err)
    assert not problem.gone  # still missing; `gone` turns True once the module is importable


# -- plan and load_pipeline: arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"source": 3}, TypeError, "source must be a pipeline folder (str or Path)"),
        ({"source": ""}, ValueError, "source='' names no pipeline"),
        ({"config": {"quant_backend": "quanto"}}, TypeError, "config must be a quantkit.PipelineQuantizationConfig"),
        ({"device": 0}, TypeError, "device must be a string such as 'cpu'"),
        ({"device": "gpu"}, ValueError, "device='gpu' is not a device name"),
        ({"torch_dtype": "int8"}, ValueError, "Unsupported dtype 'int8'"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_plan_refuses_bad_arguments(flux_dir, kwargs, error, words):
    kwargs = {"source": flux_dir, **kwargs}
    with pytest.raises(error) as info:
        qk.plan(kwargs.pop("source"), **kwargs)
    assert words in str(info.value)


def test_load_pipeline_on_a_missing_device_is_a_runtime_error_before_planning(flux_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="device='cuda' needs a CUDA GPU, but this machine has"):
        qk.load_pipeline(flux_dir / "nowhere", device="cuda")  # refused before the (missing) source is looked at
    with pytest.raises(TypeError, match="progress must be True or False"):
        qk.load_pipeline(flux_dir, progress="no")


def test_a_skip_list_entry_naming_no_module_is_refused_with_the_nearest(flux_dir):
    typo = PipelineQuantizationConfig(
        quant_backend="quanto",
        quant_kwargs={"weights_dtype": "int8", "modules_to_not_convert": ["proj_ot"]},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    with pytest.raises(ValueError) as info:
        qk.plan(flux_dir, typo, device="cpu")
    message = str(info.value)
    assert message.startswith("modules_to_not_convert entry 'proj_ot' names no module of text_encoder_2, transformer")
    assert "Did you mean 'proj_out'" in message and "keep nothing in full precision" in message
    # one spec over two components: a name of either is fine; bitsandbytes spells the option its own way
    kwargs = {"weights_dtype": "int8", "modules_to_not_convert": ["proj_out", "wo"]}
    fine = PipelineQuantizationConfig(
        quant_backend="quanto", quant_kwargs=kwargs, components_to_quantize=["transformer", "text_encoder_2"]
    )
    assert qk.plan(flux_dir, fine, device="cpu").components["transformer"].skipped_layers
    bnb = PipelineQuantizationConfig(
        quant_mapping={"transformer": QuantSpec("bitsandbytes_8bit", llm_int8_skip_modules=["transformer_blocks.9"])}
    )
    with pytest.raises(
        ValueError, match="llm_int8_skip_modules entry 'transformer_blocks.9' names no module of transformer"
    ):
        qk.plan(flux_dir, bnb, device="cpu")


def test_footprint_and_save_check_what_they_are_given(tmp_path):
    from quantkit.planning.checks import check_pipeline_object, check_save_target

    with pytest.raises(TypeError, match=r"footprint\(\) .* takes a diffusers pipeline .* got str 'pipe'"):
        qk.footprint("pipe")

    class NoModels:
        components = {"scheduler": object()}

    with pytest.raises(ValueError, match="has no torch.nn.Module components"):
        qk.footprint(NoModels())
    with pytest.raises(TypeError, match=r"save_pipeline\(\) takes a diffusers pipeline"):
        check_pipeline_object(None, "save_pipeline()")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_save_target(tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        check_save_target(tmp_path / "full")
    with pytest.raises(TypeError, match="must be a path"):
        check_save_target(3)
    assert check_save_target(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


# -- the pipeline folder on disk ------------------------------------------------------------------------------------


def _index(folder: Path) -> dict:
    return json.loads((folder / "model_index.json").read_text())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[1, 2]", "holds a JSON list, not an object"),
        ("{}", "has no '_class_name'"),
        ('{"_class_name": "FluxPipeline"}', "lists no components"),
        ('{"vae": ["diffusers", "AutoencoderKL"]}', "has no '_class_name'"),
        ('{"_class_name": "FluxPipeline", "vae": ', "is not valid JSON (Expecting value"),
        ('{"_class_name": "FluxPipeline", "vae": ["diffusers", 3]}', "component 'vae' is ['diffusers', 3]"),
    ],
    ids=["list", "empty", "no-components", "no-class-name", "invalid-json", "not-names"],
)
def test_a_malformed_model_index_names_the_file(flux_dir, tmp_path, text, words):
    folder = copy_of(flux_dir, tmp_path)
    (folder / "model_index.json").write_text(text)
    with pytest.raises(ValueError) as info:
        qk.plan(folder)
    assert str(folder / "model_index.json") in str(info.value) and words in str(info.value)


def test_unknown_classes_are_refused_before_loading(flux_dir, tmp_path):
    folder = copy_of(flux_dir, tmp_path)
    index = _index(folder)
    (folder / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKLL"]}))
    with pytest.raises(ValueError, match="diffusers .* has no class 'AutoencoderKLL' \\(named in model_index.json\\)"):
        qk.load_pipeline(folder, QUANTO, device="cpu", progress=False)  # before the transformer is quantized
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipelin"}))
    with pytest.raises(ValueError, match="has no class 'FluxPipelin'"):
        qk.load_pipeline(folder, device="cpu", progress=False)
    (folder / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers_nope", "AutoencoderKL"]}))
    with pytest.raises(
        ImportError,
        match="names the library 'diffusers_nope', which is not installed. Install it "
        "with: pip install 'diffusers_nope'",
    ):
        qk.load_pipeline(folder, device="cpu", progress=False)


def test_a_component_config_that_is_not_json_names_the_file(flux_dir, tmp_path):
    folder = copy_of(flux_dir, tmp_path)
    (folder / "scheduler" / "scheduler_config.json").write_text("{oops")
    with pytest.raises(ValueError) as info:
        qk.plan(folder)
    assert str(folder / "scheduler" / "scheduler_config.json") in str(info.value)
    assert "is not valid JSON" in str(info.value) and "the 'scheduler' component" in str(info.value)
    (folder / "scheduler" / "scheduler_config.json").write_text("[]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        qk.plan(folder)


def test_a_missing_component_folder_or_weights_file_names_the_path(flux_dir, tmp_path):
    folder = copy_of(flux_dir, tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match=r"model_index.json lists the component 'vae' .* but .*vae is missing"):
        qk.load_pipeline(folder, device="cpu", progress=False)
    (folder / "vae").write_text("")
    with pytest.raises(NotADirectoryError, match="vae is a file"):
        qk.plan(folder)
    (folder / "vae").unlink()
    shutil.copytree(flux_dir / "vae", folder / "vae")
    next((folder / "vae").glob("*.safetensors")).unlink()  # was: diffusers' message about a .bin file
    with pytest.raises(FileNotFoundError) as info:
        qk.load_pipeline(folder, device="cpu", progress=False)
    assert f"{folder / 'vae'} has a config.json but no weights (found: config.json)" in str(info.value)


def test_a_truncated_or_garbled_weights_file_names_the_file(flux_dir, tmp_path):
    folder = copy_of(flux_dir, tmp_path)
    file = next((folder / "vae").glob("*.safetensors"))
    data = file.read_bytes()
    file.write_bytes(data[:-1000])  # was: SafetensorError without a path, from inside diffusers
    with pytest.raises(ValueError) as info:
        qk.load_pipeline(folder, device="cpu", progress=False)
    assert str(info.value).startswith(
        f"{file} is truncated: its header describes {len(data)} bytes but the file has {len(data) - 1000}"
    )
    file.write_bytes(data[:8] + b"\xff" * 40 + data[48:])
    with pytest.raises(ValueError, match="is not a safetensors file: its header is not JSON"):
        qk.plan(folder)
    file.write_bytes(data[:3])
    with pytest.raises(ValueError, match="is not a safetensors file \\(shorter than 8 bytes\\)"):
        qk.plan(folder)


def test_a_header_whose_byte_ranges_do_not_fit_names_the_tensor(tmp_path):
    import struct

    from quantkit.planning.checks import check_weight_files

    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ValueError, match="tensor 'w' \\(F32 \\[2, 2\\]\\) should take 16 bytes but its header gives"):
        check_weight_files(tmp_path)


# -- quantkit's own saved folders -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_dir(flux_dir, tmp_path_factory):
    pipe = qk.load_pipeline(flux_dir, QUANTO, device="cpu", progress=False)
    return qk.save_pipeline(pipe, tmp_path_factory.mktemp("saved") / "pipe", format="quantkit")  # quantkit's own files


def test_a_damaged_saved_folder_is_explained_before_restoring(saved_dir, tmp_path):
    folder = copy_of(saved_dir, tmp_path)
    info = folder / "transformer" / "quantkit_quantization.json"
    weights = folder / "transformer" / "quantkit_weights.safetensors"
    good_info, good_weights = info.read_text(), weights.read_bytes()
    assert qk.plan(folder).components["transformer"].loader is qk.planning.Loader.RESTORE

    info.write_text(good_info[: len(good_info) // 2])  # was: a bare JSONDecodeError
    with pytest.raises(ValueError, match=f"{info} is not valid JSON"):
        qk.load_pipeline(folder, device="cpu", progress=False)
    info.write_text(json.dumps({"quant": {"backend": "quanto"}, "layers": []}))
    with pytest.raises(ValueError, match=f"{info} is damaged .*'layers' is not a JSON object"):
        qk.plan(folder)
    info.write_text(good_info)

    weights.write_bytes(good_weights[: len(good_weights) - 4096])  # was: SafetensorError with no path
    with pytest.raises(ValueError, match=f"{weights} is truncated"):
        qk.load_pipeline(folder, device="cpu", progress=False)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=f"{weights} is missing; {info} describes a quantized component"):
        qk.plan(folder)
    weights.write_bytes(good_weights)
    assert qk.plan(folder).components["transformer"].loader is qk.planning.Loader.RESTORE


# -- the GGUF cache verifies what it trusts -------------------------------------------------------------------------


@pytest.fixture
def gguf_cache(tmp_path, monkeypatch):
    """A cache folder of this test's own (no file another test wrote is picked up)."""
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def _cached(flux_dir, folder=None):
    from quantkit.backends.gguf_files import component_file

    folder = folder or flux_dir / "transformer"
    layers = (
        qk.plan(flux_dir, PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("gguf")}), device="cpu")
        .components["transformer"]
        .quantized_layers
    )
    return component_file(folder, {"quant_type": "Q8_0"}, [f"{n}.weight" for n in layers])


def test_a_cached_gguf_file_has_a_record_and_damage_is_rewritten(flux_dir, gguf_cache):
    from quantkit.backends.gguf_files import file_digest, record_path

    path = _cached(flux_dir)
    record = json.loads(record_path(path).read_text())
    good = path.read_bytes()
    assert record["file"] == {"size": len(good), "mtime_ns": path.stat().st_mtime_ns, "sha256": file_digest(path)}
    assert len(record["source"]["sha256"]) == 64 and record["source"]["files"][0]["file"].endswith(".safetensors")

    middle = len(good) // 2  # random bytes in the middle: was loaded, and drew an all-NaN image
    path.write_bytes(good[:middle] + bytes(range(256)) * 4 + good[middle + 1024 :])
    with pytest.warns(UserWarning, match=r"Rewriting the cached GGUF file .*: its bytes changed since it was written"):
        assert _cached(flux_dir) == path
    assert path.read_bytes() == good

    path.write_bytes(good[: len(good) // 3])  # truncated: was reported, and never rewritten
    with pytest.warns(UserWarning, match="it is truncated or overwritten"):
        _cached(flux_dir)
    assert path.read_bytes() == good

    record_path(path).unlink()  # a file without a record: what it was made from is unknown
    with pytest.warns(UserWarning, match="its record .* is missing"):
        _cached(flux_dir)
    assert record_path(path).is_file() and path.read_bytes() == good


def test_a_touched_source_is_hashed_again_and_a_changed_one_rewritten(flux_dir, gguf_cache, tmp_path, monkeypatch):
    import os
    import warnings

    from quantkit.backends import gguf_files

    folder = tmp_path / "transformer"
    shutil.copytree(flux_dir / "transformer", folder)
    path = _cached(flux_dir, folder)
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # touched, same bytes

    def refuse(*args, **kwargs):
        raise AssertionError("the file was written again although its source did not change")

    with monkeypatch.context() as m, warnings.catch_warnings():
        warnings.simplefilter("error")
        m.setattr(gguf_files, "write_gguf", refuse)
        assert _cached(flux_dir, folder) == path
    data = bytearray(weights.read_bytes())  # retrained: same size, other bytes
    data[-64:] = bytes(64)
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"the source weights in {folder} changed since it was written"):
        assert _cached(flux_dir, folder) == path


def test_temporary_files_of_dead_writers_are_removed(flux_dir, gguf_cache):
    import os
    import subprocess

    gguf_cache.mkdir(parents=True)
    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid is free now: the writer that left this file is gone
    dead = gguf_cache / f"transformer-Q8_0-0123.gguf.tmp{ended.pid}"
    dead.write_bytes(b"half a file")
    alive = gguf_cache / f"transformer-Q8_0-0123.gguf.tmp{os.getpid()}"
    alive.write_bytes(b"being written")
    _cached(flux_dir)
    assert not dead.exists() and alive.exists()


def test_a_users_gguf_file_is_reported_with_its_path_never_rewritten(flux_dir, gguf_cache, tmp_path):
    path = _cached(flux_dir)
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(path.read_bytes()[: path.stat().st_size - 4096])
    config = PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("gguf", gguf_file=mine)})
    with pytest.raises(ValueError) as info:
        qk.load_pipeline(flux_dir, config, device="cpu", progress=False)
    assert str(mine) in str(info.value) and "truncated" in str(info.value)
    assert mine.stat().st_size == path.stat().st_size - 4096  # not touched
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qk.plan(
            flux_dir,
            PipelineQuantizationConfig(
                quant_mapping={"transformer": QuantSpec("gguf", gguf_file=tmp_path / "nowhere.gguf")}
            ),
            device="cpu",
        )


# -- compare and its command line -----------------------------------------------------------------------------------

FAST = {
    "prompts": ["a red circle"],
    "seeds": [0],
    "warmup": 0,
    "repeats": 1,
    "num_inference_steps": 2,
    "report": False,
    "progress": False,
    "use_lpips": False,
}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--steps", "0"], "argument --steps: 0 is out of range: use from 1 to 10000"),
        (["--steps", "two"], "argument --steps: 'two' is not a whole number"),
        (["--keep-sensitive", "-1"], "argument --keep-sensitive: -1 is out of range: use 0 or more"),
        (["--seeds", "-1"], "argument --seeds: -1 is out of range"),
        (["--seeds", str(2**63)], "argument --seeds: 9223372036854775808 is out of range"),
        (["--repeats", "0"], "argument --repeats: 0 is out of range"),
        (["--timeout", "nan"], "argument --timeout: 'nan' must be a finite number of seconds > 0"),
        (["--timeout", "-3"], "must be a finite number of seconds > 0"),
        (["--prompts", " "], "argument --prompts: an empty prompt draws nothing"),
        (["--call-kwargs", "[1]"], "argument --call-kwargs: '[1]' is a JSON list; pass an object"),
        (["--call-kwargs", '{"true_cfg_scale": NaN}'], "NaN is not JSON"),
        (["--device", "gpu"], "argument --device: device='gpu' is not a device name"),
        (["--variants", "nowhere.json"], "argument --variants: 'nowhere.json' does not exist"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_command_line_values_are_usage_errors(argv, words, capsys):
    from quantkit.cli import USAGE, main

    with pytest.raises(SystemExit) as exit_:
        main(["compare", *argv])
    assert exit_.value.code == USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: quantkit compare") and words in err


def test_an_empty_prompts_file_is_refused_not_replaced_by_the_defaults(tmp_path, capsys):
    from quantkit.cli import _parser, main

    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--prompts-file", str(empty)])
    assert exit_.value.code == 2 and "has no prompts (it is empty or blank)" in capsys.readouterr().err
    empty.write_text("a red circle\n\n a blue square \n")
    args = _parser().parse_args(["compare", "--prompts", "x", "--prompts-file", str(empty)])
    assert args.prompts + args.prompts_file == ["x", "a red circle", "a blue square"]


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("v.json", '{"x": {"quant_mapping": ["transformer"]}}', "Variant 'x' in "),  # was: a full traceback
        ("v.json", '{"x": {"quant_backend": "quanto", "quant_kwargs": "int8"}}', "quant_kwargs must be a dict"),
        ("v.yaml", "x: [unclosed\n  - y: {", "is not valid YAML"),
        ("v.json", b"\xff\xfe{}", "is not UTF-8 text"),
        ("v.json", "[]", "must hold a non-empty mapping"),
    ],
    ids=["list-mapping", "string-kwargs", "bad-yaml", "not-utf8", "list"],
)
def test_a_bad_variants_file_is_one_line_and_exit_1(flux_dir, tmp_path, capsys, name, text, words):
    from quantkit.cli import CANNOT_RUN, main

    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["compare", str(flux_dir), "--variants", str(path), "--out", str(tmp_path / "o")]) == CANNOT_RUN
    err = capsys.readouterr().err
    assert err.startswith("quantkit compare: error: ") and words in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("variants", "options", "error", "words"),
    [
        (
            {
                "typo": PipelineQuantizationConfig(
                    quant_mapping={"transformer": QuantSpec("quanto", modules_to_not_convert=["proj_ot"])}
                )
            },
            {},
            ValueError,
            "Variant 'typo': modules_to_not_convert entry 'proj_ot' names no module of transformer",
        ),
        (
            {
                "t5": PipelineQuantizationConfig(
                    quant_backend="quanto",
                    quant_kwargs={"weights_dtype": "int8"},
                    components_to_quantize=["text_encoder_3"],
                )
            },
            {},
            ValueError,
            "Variant 't5': Component 'text_encoder_3' is not in this FluxPipeline",
        ),
        ({"q8": QUANTO}, {"sensitivity": "q9"}, ValueError, "sensitivity='q9' names no variant. Did you mean 'q8'?"),
        ({"q8": QUANTO}, {"sensitivity": "baseline"}, ValueError, "is the unquantized baseline"),
        (
            {"q8": QUANTO},
            {"sensitivity": "q8", "sensitivity_component": "vae"},
            ValueError,
            "sensitivity_component='vae' is not quantized by variant 'q8'",
        ),
        ({"q8": QUANTO}, {"keep_sensitive": 2}, ValueError, "keep_sensitive=2 keeps the most sensitive layers"),
        ({"q8": QUANTO}, {"call_kwargs": {"output_type": "pil"}}, ValueError, "sets what compare sets itself"),
        (
            {"q8": QUANTO},
            {"call_kwargs": {"num_inference_steps": 0}},
            ValueError,
            "call_kwargs['num_inference_steps']=0 is out of range",
        ),
        ({"q8": QUANTO}, {"call_kwargs": {"x": float("nan")}}, TypeError, "call_kwargs must be JSON-able"),
        ({"q8": QUANTO}, {"start_method": "threads"}, ValueError, "start_method='threads' is not available here"),
        ({"q8": QUANTO}, {"prompts": "a red circle"}, TypeError, "for one prompt write prompts=['a red circle']"),
    ],
    ids=[
        "skip-typo",
        "no-component",
        "no-variant",
        "baseline",
        "not-quantized",
        "keep-without-study",
        "reserved-kwarg",
        "steps-in-kwargs",
        "nan-kwarg",
        "start-method",
        "prompt-string",
    ],
)
def test_compare_refuses_before_a_folder_or_a_worker(flux_dir, tmp_path, variants, options, error, words):
    out = tmp_path / "never-made"
    with pytest.raises(error) as info:
        qk.compare(flux_dir, {"baseline": None, **variants}, out=out, **{**FAST, **options})
    assert words in str(info.value)
    assert not out.exists()


def test_compare_on_a_device_this_machine_lacks_exits_1_and_makes_no_folder(flux_dir, tmp_path, capsys):
    import torch

    from quantkit.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "never-made"
    assert main(["compare", str(flux_dir), "--device", "cuda:1", "--out", str(out), "-q"]) == 1
    assert "device='cuda:1' needs a CUDA GPU" in capsys.readouterr().err and not out.exists()


def test_an_out_that_cannot_be_written_is_a_clear_error(flux_dir, tmp_path):
    import os

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        qk.compare(flux_dir, {"baseline": None}, out=tmp_path / "file" / "deeper", **FAST)
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="pass a folder you can write to"):
        qk.compare(flux_dir, {"baseline": None}, out=locked / "out", **FAST)


def test_failed_variants_exit_3_say_why_and_when_retry_failed_helps(flux_dir, tmp_path, capsys, monkeypatch):
    from quantkit.backends import get_backend
    from quantkit.cli import VARIANTS_FAILED, main
    from quantkit.comparison import append_record
    from quantkit.comparison.variants import config_dict, variants_to_dict

    out = tmp_path / "out"
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps(variants_to_dict({"baseline": None, "q8": QUANTO})))
    argv = [
        "compare",
        str(flux_dir),
        "--out",
        str(out),
        "--variants",
        str(variants),
        "--prompts",
        "a red circle",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--sensitivity",
        "none",
        "--no-lpips",
        "-q",
    ]
    qk.compare(flux_dir, {"baseline": None}, out=out, **{**FAST, "report": True})
    # as if q8 had run while optimum-quanto was missing: its record says ImportError (the MISSING_PACKAGE kind)
    error = "ImportError: Cannot quantize 'transformer': package 'optimum.quanto' is not installed."
    append_record(
        out,
        {
            "variant": "q8",
            "config": config_dict(QUANTO),
            "status": "error",
            "error_type": "ImportError",
            "error": error,
        },
    )
    assert main(argv) == VARIANTS_FAILED  # a rerun skips it, says so, and says that --retry-failed may help now
    err = capsys.readouterr().err
    assert "warning: Variant 'q8' is recorded as failed" in err
    assert "1 of 2 variants failed:\n  q8: ImportError: Cannot quantize 'transformer'" in err
    assert "the package it missed is installed now: run the same command with --retry-failed" in err
    assert (out / "report.md").is_file()

    monkeypatch.setattr(get_backend("quanto"), "module", "quantkit_no_such_package")  # still missing: no hint
    assert main(argv) == VARIANTS_FAILED
    err = capsys.readouterr().err
    assert "q8: ImportError" in err and "--retry-failed" not in err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the helper processes")
def test_the_fork_server_exits_at_once_when_compare_is_killed(flux_dir, tmp_path):
    """Killed while the fork server still imports the stack, it lingered for 28 s (4.9 s when idle); now < 1 s."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable,
        "-m",
        "quantkit",
        "compare",
        str(flux_dir),
        "--out",
        str(tmp_path / "out"),
        "--prompts",
        "a red circle",
        "--seeds",
        "0",
        "--sensitivity",
        "none",
        "--no-report",
        "-q",
    ]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server, deadline = None, time.time() + 120
    while server is None and time.time() < deadline and proc.poll() is None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if (
                    int(stat.read_text().rsplit(")", 1)[1].split()[1]) == proc.pid
                    and b"forkserver" in (stat.parent / "cmdline").read_bytes()
                ):
                    server = int(stat.parent.name)
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.05)
    assert server is not None, "no fork server started"
    time.sleep(1.0)  # importing torch and diffusers by now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = time.time()
    while time.time() - killed < 10 and Path(f"/proc/{server}").exists():
        try:
            if Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.05)
    lingered = time.time() - killed
    if Path(f"/proc/{server}").exists():
        os.kill(server, signal.SIGKILL)
    assert lingered < 3, f"the fork server outlived its parent by {lingered:.1f} s"


# -- the widgets' setters -----------------------------------------------------------------------------------------


def test_widget_setters_refuse_what_they_cannot_show(flux_dir):
    pytest.importorskip("ipywidgets")
    from quantkit.show.widgets import CompareDashboard, ConfigBuilder, LayerInspector

    b = ConfigBuilder(flux_dir, device="cpu")
    with pytest.raises(TypeError, match="ConfigBuilder shows a quantkit PipelineQuantizationConfig, got dict"):
        b.value = {"quant_backend": "quanto"}
    with pytest.raises(
        ValueError, match="names 'transformr', which is not a model component.*Did you mean 'transformer'"
    ):  # was: dropped from the controls without a word
        b.value = PipelineQuantizationConfig(quant_mapping={"transformr": QuantSpec("quanto")})
    with pytest.raises(ValueError, match="device='gpu' is not a device name"):
        b.simple.set_device("gpu")
    with pytest.raises(TypeError, match="The options of backend 'quanto' must be a dict"):
        b.simple.set("quanto", ["weights_dtype"])
    with pytest.raises(ValueError, match="Unknown quant_backend 'quantoo'"):
        b.simple.set("quantoo")

    li = LayerInspector(flux_dir, QUANTO, device="cpu", analyze=False)
    with pytest.raises(TypeError, match=r"for one layer write \['proj_out'\]"):  # was: eight one-letter names
        li.keep = "proj_out"
    with pytest.raises(TypeError, match="keep takes a list of layer names, got int"):
        li.set_keep(3)
    with pytest.raises(ValueError, match="Not among the ranked layers shown"):
        li.set_keep(["proj_out"])
    with pytest.raises(ValueError, match=r"keep_worst\(n=-1\): n is how many"):  # was: all but the last one
        li.keep_worst(-1)
    with pytest.raises(TypeError, match="keep_worst takes a whole number"):
        li.keep_worst(True)

    d = CompareDashboard(flux_dir, {"q8": QUANTO})
    with pytest.raises(TypeError, match="A variant name is a string"):
        d.add(3, None)
    with pytest.raises(ValueError, match="A variant needs a name"):
        d.add(" ", None)
    with pytest.raises(TypeError, match="expected a PipelineQuantizationConfig, a ConfigBuilder or None"):
        d.add("x", {"quant_backend": "quanto"})
    with pytest.raises(ValueError, match="No variant 'q9' to remove. Did you mean 'q8'"):
        d.remove("q9")
