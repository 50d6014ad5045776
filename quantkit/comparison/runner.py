"""Worker processes: one fresh process per variant, forked from a server that imported the whole stack once.

CPU memory does not come back to the OS when Python frees it, so a peak measured in a process that already
loaded another variant says little; in a fresh process every variant starts from the same memory image.
Workers are forked from a server process that has imported the whole stack once (multiprocessing's
"forkserver"; "spawn" on CUDA), so a worker starts in milliseconds and every worker starts equally large.
The parent relays the worker's progress messages, enforces the timeout, stops it when asked (`stop`), and
turns what it left behind (record.json, images) into a record.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..config import PipelineQuantizationConfig
from ..files import atomic_write_text
from .settings import RECORD_FIELDS, CompareSettings, Job
from .store import IMAGES_DIR, SENSITIVITY_DIR, WORK_DIR, jsonable
from .variants import config_dict, slug

# Modules every worker has imported before it starts (see context): the whole stack, every backend included,
# so that no variant's memory includes importing its library and every worker starts equally large. The lifeline
# comes first: the server exits as soon as its parent is gone, even while it is still importing the rest.
PRELOAD = [
    "quantkit.comparison.lifeline",
    "numpy",
    "torch",
    "safetensors",
    "diffusers",
    "transformers",
    "diffusers.pipelines.flux.pipeline_flux",
    "diffusers.models.transformers.transformer_flux",
    "diffusers.models.autoencoders.autoencoder_kl",
    "transformers.models.t5.modeling_t5",
    "transformers.models.clip.modeling_clip",
    "optimum.quanto",
    "torchao.quantization",
    "bitsandbytes",
    "gguf",
    "diffusers.quantizers.gguf.utils",
    "skimage.metrics",
    "quantkit.load",
    "quantkit.measure.footprint",
    "quantkit.measure.quality",
    "quantkit.measure.memory",
    "quantkit.measure.latency",
    "quantkit.measure.sensitivity",
    "quantkit.measure.environment",
    "quantkit.comparison.worker",
]

CONTEXT_LOCK = threading.Lock()


def context(start_method: str | None, device: str):
    """The multiprocessing context for workers; a forkserver gets the whole stack preloaded.

    OMP_WAIT_POLICY=PASSIVE: OpenMP threads that spin while waiting make a 2-thread CPU run several times slower
    as soon as another process wants a core; set (unless already set) in the server's environment only.
    """
    import multiprocessing as mp

    method = start_method or (
        "forkserver" if not device.startswith("cuda") and "forkserver" in mp.get_all_start_methods() else "spawn"
    )
    if method not in mp.get_all_start_methods():
        raise ValueError(f"start_method={method!r} is not available here; use one of {mp.get_all_start_methods()}.")
    ctx = mp.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        with CONTEXT_LOCK:
            ctx.set_forkserver_preload(PRELOAD)
            added = "OMP_WAIT_POLICY" not in os.environ
            if added:
                os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            try:
                _short_socket_dir()
                forkserver.ensure_running()
            except OSError as error:
                if "AF_UNIX path too long" not in str(error):
                    raise
                # Python < 3.13 puts the server's socket under TMPDIR, and a socket path has ~107 bytes at most
                warnings.warn(
                    f"multiprocessing cannot start its fork server: TMPDIR ({tempfile.gettempdir()}) is too long "
                    "for a socket path. Workers start with 'spawn' instead (each imports the stack itself, a few "
                    "seconds more per variant); a shorter TMPDIR brings the fork server back.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return mp.get_context("spawn")
            finally:
                if added:
                    del os.environ["OMP_WAIT_POLICY"]
    return ctx


SOCKET_PATH_MAX = 100  # a Unix socket path has 108 bytes on Linux (104 on macOS), with room to spare


def _short_socket_dir() -> None:
    """Give multiprocessing a short folder for its sockets when TMPDIR is too long for one.

    Python < 3.13 creates the fork server's socket as TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX, and binding a
    longer path than ~107 bytes fails ("AF_UNIX path too long") — a deep TMPDIR such as a test runner's or CI's
    does that. As Python 3.13 does itself, the folder then goes under /tmp (removed at exit like multiprocessing's
    own); the rest of the run keeps TMPDIR."""
    from multiprocessing import process, util

    config = process.current_process()._config
    current = config.get("tempdir") or os.path.join(tempfile.gettempdir(), "pymp-xxxxxxxx")
    if len(os.path.join(current, "listener-xxxxxxxx")) <= SOCKET_PATH_MAX or not os.access("/tmp", os.W_OK):
        return
    folder = tempfile.mkdtemp(prefix="pymp-", dir="/tmp")
    util.Finalize(None, shutil.rmtree, args=[folder], exitpriority=-100)
    config["tempdir"] = folder


@contextmanager
def main_hidden():
    """Keep multiprocessing from re-running the caller's script in the worker.

    With "spawn" and "forkserver", a child process imports the parent's main script (so that functions defined
    there can be unpickled), which runs whatever that script does at top level unless it is guarded by
    `if __name__ == "__main__":`. The worker needs nothing from it (its entry point lives in this module), so
    while the process starts, `__main__` is replaced by an empty module that names no file to import.
    """
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class Runner:
    """Starts one worker per job, relays its progress, and turns what it left behind into a record.

    Args:
        folder: the comparison's output folder.
        stored: the settings stored in meta.json (source, prompts, seeds, call kwargs, device, dtype).
        settings: the CompareSettings (start method, timeout, warm-up, repeats, quality options).
        stop: a threading.Event; once set, the worker in progress is stopped and no new one starts.
    """

    def __init__(self, folder: Path, stored: dict, settings: CompareSettings, stop: threading.Event | None = None):
        self.folder = folder
        self.stored = stored
        self.settings = settings
        self.stop = stop
        self._ctx = None

    @property
    def ctx(self):
        if self._ctx is None:
            self._ctx = context(self.settings.start_method, self.stored["device"])
        return self._ctx

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _job(self, kind: str, name: str, work: Path, **more) -> Job:
        s = self.stored
        return Job(
            kind=kind,
            name=name,
            work=str(work),
            folder=str(self.folder),
            source=s["source"],
            device=s["device"],
            torch_dtype=s["torch_dtype"],
            prompts=s["prompts"],
            seeds=s["seeds"],
            call_kwargs=s["call_kwargs"],
            env=dict(os.environ),
            sys_path=list(sys.path),
            warmup=self.settings.warmup,
            repeats=self.settings.repeats,
            use_lpips=self.settings.use_lpips,
            clip=self.settings.clip_model,
            **more,
        )

    def _launch(self, job: Job, bar, label: str) -> tuple[dict | None, int | None, dict]:
        """Run `job` in a worker; (what it wrote to record.json or None, exit code, parent-side timings)."""
        from .worker import worker_main

        ctx = self.ctx
        work = Path(job.work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        messages_r, messages_w = ctx.Pipe(duplex=False)
        lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        proc = ctx.Process(
            target=worker_main, args=(job, messages_w, lifeline_r), name=f"quantkit-{label}", daemon=True
        )
        with main_hidden():
            proc.start()
        messages_w.close()
        lifeline_r.close()
        started = None
        deadline = None if self.settings.timeout_s is None else t0 + self.settings.timeout_s
        timed_out = stopped = False
        try:
            while True:
                if messages_r.poll(0.1):
                    try:
                        msg = messages_r.recv()
                    except EOFError:
                        msg = None
                    if msg is not None:
                        if started is None:
                            started = time.perf_counter() - t0
                        if bar is not None:
                            bar.set_postfix_str(f"{label}: {msg}", refresh=True)
                if not proc.is_alive():
                    break
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    proc.kill()
                    break
                if self.stopped:
                    stopped = True
                    proc.kill()
                    break
            proc.join()
        except BaseException:
            proc.kill()
            proc.join()
            raise
        finally:
            messages_r.close()
            lifeline_w.close()
        wall = time.perf_counter() - t0
        record_path = work / "record.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() and not (timed_out or stopped) else None
        parent = {"worker_start_s": started, "wall_s": wall, "timed_out": timed_out, "stopped": stopped}
        return record, proc.exitcode, parent

    def run_variant(
        self, name: str, config: PipelineQuantizationConfig | None, reference: tuple[str, str] | None, bar
    ) -> dict | None:
        """Run one variant; its record (None when `stop` was set while it ran: nothing is recorded)."""
        work = self.folder / WORK_DIR / f"{slug(name)}-{os.getpid()}"
        job = self._job(
            "variant", name, work, config=config_dict(config), reference=None if reference is None else list(reference)
        )
        record, code, parent = self._launch(job, bar, name)
        if parent["stopped"]:
            shutil.rmtree(work, ignore_errors=True)
            return None
        if record is None:
            record = failed_record(name, job.config, code, parent, self.settings.timeout_s)
        for key in RECORD_FIELDS:
            record.setdefault(key, None)  # every record has every field, a failed one with None
        record.setdefault("timings", {}).update({k: v for k, v in parent.items() if k not in ("timed_out", "stopped")})
        if record.get("status") == "ok" and (work / IMAGES_DIR).is_dir():
            final = self.folder / IMAGES_DIR / slug(name)
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / IMAGES_DIR, final)
            record["images"] = [f"{IMAGES_DIR}/{slug(name)}/{f}" for f in record.get("images", [])]
            record["images_npy"] = f"{IMAGES_DIR}/{slug(name)}/images.npy"
        else:
            record["images"], record["images_npy"] = [], None
        shutil.rmtree(work, ignore_errors=True)
        return record

    def run_sensitivity(self, variant: str, config: dict, component: str | None, bar) -> dict | None:
        work = self.folder / WORK_DIR / f"sensitivity-{slug(variant)}-{os.getpid()}"
        job = self._job("sensitivity", variant, work, config=config, component=component)
        record, code, parent = self._launch(job, bar, f"{variant} per-layer")
        if parent["stopped"]:
            shutil.rmtree(work, ignore_errors=True)
            return None
        if record is None:
            record = {
                "variant": variant,
                "component": component,
                "status": "error",
                "error": exit_message(code, parent, self.settings.timeout_s),
            }
        out = self.folder / SENSITIVITY_DIR
        out.mkdir(exist_ok=True)
        base = f"{slug(variant)}__{record.get('component') or component or 'denoiser'}"
        if record.get("status") == "ok":
            os.replace(work / "layers.csv", out / f"{base}.csv")
        else:  # kept beside the tables so the failure can be read; no .csv, so a rerun tries again
            base += ".failed"
        record["timings"] = {
            **record.get("timings", {}),
            **{k: v for k, v in parent.items() if k not in ("timed_out", "stopped")},
        }
        atomic_write_text(out / f"{base}.json", json.dumps(jsonable(record), indent=1))
        shutil.rmtree(work, ignore_errors=True)
        return record


def exit_message(code: int | None, parent: dict, timeout_s) -> str:
    if parent.get("timed_out"):
        return f"TimeoutError: the variant took longer than timeout_s={timeout_s} s and was stopped"
    if code is not None and code < 0:
        import signal

        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = str(-code)
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if sig == "SIGKILL" else ""
        return f"WorkerDied: the worker process was killed by {sig}{hint} before it finished"
    return f"WorkerDied: the worker process exited with code {code} without a result"


def failed_record(name: str, config: dict | None, code: int | None, parent: dict, timeout_s) -> dict:
    message = exit_message(code, parent, timeout_s)
    return {
        "variant": name,
        "config": config,
        "status": "error",
        "error": message,
        "error_type": message.split(":")[0],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


__all__ = ["PRELOAD", "Runner", "context", "exit_message", "failed_record", "main_hidden"]
