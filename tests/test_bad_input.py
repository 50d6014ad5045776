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

QUANTO = PipelineQuantizationConfig(quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"},
                                    components_to_quantize=["transformer"])


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
        ({"quant_mapping": {"transformer": {"weights_dtype": "int8"}}}, ValueError,
         "quant_mapping['transformer'] needs a 'backend' key"),
        ({"quant_mapping": {3: {"backend": "quanto"}}}, TypeError, "component names in quant_mapping must be strings"),
        ({"quant_backend": "quanto", "quant_kwargs": ["weights_dtype", "int8"]}, TypeError,
         "quant_kwargs must be a dict of the backend's options"),
        ({"quant_backend": "quanto", "quant_kwargs": "int8"}, TypeError, "got str 'int8'"),
        ({"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"}, "components_to_quantize": []},
         ValueError, "components_to_quantize=[] names no component"),
        ({"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": "int8"}, "components_to_quantize": [1]},
         TypeError, "components_to_quantize must be a list of component names"),
        ({"quant_backend": "quanto", "quant_kwargs": {"weights_dtype": 8}}, TypeError,
         "takes one of 'int8', 'int4', 'int2' or 'float8', got int 8"),
        ({"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"llm_int8_threshold": float("nan")}}, ValueError,
         "llm_int8_threshold=nan is not a finite number"),
        ({"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"llm_int8_threshold": float("inf")}}, ValueError,
         "llm_int8_threshold=inf is not a finite number"),
        ({"quant_backend": "bitsandbytes_4bit", "quant_kwargs": {"load_in_4bit": "yes"}}, ValueError,
         "load_in_4bit='yes' contradicts"),
        ({"quant_backend": "gguf", "quant_kwargs": {"gguf_file": 3}}, TypeError, "takes a file path (str or Path)"),
        ({"quant_backend": "quanto", "quant_kwargs": {"modules_to_not_convert": [""]}}, ValueError,
         "empty module name"),
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
            '{"quant_backend": "bitsandbytes_8bit", "quant_kwargs": {"llm_int8_threshold": NaN}}')


def test_to_json_is_standard_json_even_with_path_values(tmp_path):
    spec = QuantSpec("gguf", quant_type="Q8_0", gguf_file=tmp_path / "x.gguf")  # a Path: stored as its text
    config = PipelineQuantizationConfig(quant_mapping={"transformer": spec})
    assert json.loads(config.to_json())["quant_mapping"]["transformer"]["gguf_file"] == str(tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="components_to_quantize must be a list of component names"):
        PipelineQuantizationConfig(quant_backend="quanto", quant_kwargs={"weights_dtype": "int8"},
                                   components_to_quantize=[Path("transformer")])


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
        require_package("quantkit_no_such_package", "optimum-quanto>=0.2.7", "The 'quanto' backend",
                        "quantkit[backends]")
    assert ("Install it with: pip install 'optimum-quanto>=0.2.7' (or every backend: pip install "
            "'quantkit[backends]').") in str(info.value)
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
    typo = PipelineQuantizationConfig(quant_backend="quanto",
                                      quant_kwargs={"weights_dtype": "int8", "modules_to_not_convert": ["proj_ot"]},
                                      components_to_quantize=["transformer", "text_encoder_2"])
    with pytest.raises(ValueError) as info:
        qk.plan(flux_dir, typo, device="cpu")
    message = str(info.value)
    assert message.startswith("modules_to_not_convert entry 'proj_ot' names no module of text_encoder_2, transformer")
    assert "Did you mean 'proj_out'" in message and "keep nothing in full precision" in message
    # one spec over two components: a name of either is fine; bitsandbytes spells the option its own way
    kwargs = {"weights_dtype": "int8", "modules_to_not_convert": ["proj_out", "wo"]}
    fine = PipelineQuantizationConfig(quant_backend="quanto", quant_kwargs=kwargs,
                                      components_to_quantize=["transformer", "text_encoder_2"])
    assert qk.plan(flux_dir, fine, device="cpu").components["transformer"].skipped_layers
    bnb = PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec(
        "bitsandbytes_8bit", llm_int8_skip_modules=["transformer_blocks.9"])})
    with pytest.raises(ValueError, match="llm_int8_skip_modules entry 'transformer_blocks.9' names no module of "
                                         "transformer"):
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
    with pytest.raises(ValueError, match="names the library 'diffusers_nope', which is not installed"):
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
    assert str(info.value).startswith(f"{file} is truncated: its header describes {len(data)} bytes but the file "
                                      f"has {len(data) - 1000}")
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
    return qk.save_pipeline(pipe, tmp_path_factory.mktemp("saved") / "pipe")


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
    layers = qk.plan(flux_dir, PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec("gguf")}),
                     device="cpu").components["transformer"].quantized_layers
    return component_file(folder, {"quant_type": "Q8_0"}, [f"{n}.weight" for n in layers])


def test_a_cached_gguf_file_has_a_record_and_damage_is_rewritten(flux_dir, gguf_cache):
    from quantkit.backends.gguf_files import file_digest, record_path

    path = _cached(flux_dir)
    record = json.loads(record_path(path).read_text())
    good = path.read_bytes()
    assert record["file"] == {"size": len(good), "mtime_ns": path.stat().st_mtime_ns, "sha256": file_digest(path)}
    assert len(record["source"]["sha256"]) == 64 and record["source"]["files"][0]["file"].endswith(".safetensors")

    middle = len(good) // 2  # random bytes in the middle: was loaded, and drew an all-NaN image
    path.write_bytes(good[:middle] + bytes(range(256)) * 4 + good[middle + 1024:])
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
        qk.plan(flux_dir, PipelineQuantizationConfig(quant_mapping={"transformer": QuantSpec(
            "gguf", gguf_file=tmp_path / "nowhere.gguf")}), device="cpu")
