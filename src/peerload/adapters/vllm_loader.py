"""`PeerloadModelLoader`: vLLM's `--load-format peerload` (imports vLLM; see `adapters/vllm.py`).

Sequence: create the model, post-process it into its runtime layout, describe where its tensors sit in
the checkpoint (`vllm_layout`), pull that layout from a READY vLLM peer of the same identity and rank
(or reshard from the ranks of another tensor-parallel layout, or load from disk), rebuild vLLM's
derived state, publish (with the boxes, so targets of other layouts can reshard from it).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import nn
from vllm.config import ModelConfig, VllmConfig
from vllm.config.load import LoadConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank
from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.model_loader.reload import (
    finalize_layerwise_processing,
    finalize_layerwise_reload,
    initialize_layerwise_reload,
)
from vllm.model_executor.model_loader.utils import process_weights_after_loading
from vllm.model_executor.utils import weights_already_processed
from vllm.utils.torch_utils import set_default_torch_dtype

from peerload.adapters.vllm_layout import model_layout, zero_padding
from peerload.adapters.vllm_support import LOAD_FORMAT, compile_cache_enabled, live_sources, loader_settings, log
from peerload.errors import LoadFailed
from peerload.identity import BackendFramework, SourceIdentity, worker_rank
from peerload.loader import LoadOptions, LoadResult, TargetLoad
from peerload.tensors import module_tensors


@dataclass
class RuntimeLayout:
    """The tensors a post-processed vLLM model serves and reads, by name."""

    tensors: dict[str, torch.Tensor]
    # Parameters that post-processing consumed into opaque kernel state (on CPU, linear weights
    # packed into oneDNN handles, the Parameter swapped for an empty one): (module, attr, original).
    consumed: list[tuple[nn.Module, str, nn.Parameter]]
    # Tensors post-processing changed otherwise (repacked in place, replaced, made): name -> how.
    # They are not plain shards of the checkpoint, so they publish no boxes (vllm_layout).
    processed: dict[str, str] = dataclasses.field(default_factory=dict)


def _signature(t: torch.Tensor) -> tuple[object, ...]:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


def runtime_layout(model: nn.Module, model_config: ModelConfig, device: torch.device) -> RuntimeLayout:
    """Post-process `model` (vLLM's own step) and return the tensors that define it afterwards."""
    before = [
        (mod_name, mod, attr, p, _signature(p.data))
        for mod_name, mod in model.named_modules()
        for attr, p in mod.named_parameters(recurse=False)
    ]
    existing = set(module_tensors(model))
    process_weights_after_loading(model, model_config, device)
    tensors = module_tensors(model)
    consumed = []
    processed: dict[str, str] = {}
    for mod_name, mod, attr, original, signature in before:
        name = f"{mod_name}.{attr}" if mod_name else attr
        data = original.data
        current = getattr(mod, attr, None)
        if current is not original and original.numel() > 0 and (current is None or current.numel() == 0):
            # The packed copy is built from `original`; moving `original` and re-packing on the
            # target is the only way to reproduce kernel state that exposes no tensor.
            tensors[name] = original.data
            consumed.append((mod, attr, original))
        elif current is not original:
            processed[name] = "replaced by vLLM's post-processing (process_weights_after_loading)"
        elif _signature(data) != signature:
            processed[name] = (
                f"repacked by vLLM's post-processing (now {tuple(data.shape)} {data.dtype}, "
                f"was {signature[1]} {signature[3]})"
            )
    for name in tensors.keys() - existing:
        processed.setdefault(name, "made by vLLM's post-processing: no checkpoint tensor")
    return RuntimeLayout(tensors=tensors, consumed=consumed, processed=processed)


def rebuild_derived_state(
    model: nn.Module, layout: RuntimeLayout, model_config: ModelConfig, device: torch.device
) -> None:
    """Re-derive vLLM's kernel state from tensors that arrived in their runtime layout."""
    for mod, attr, original in layout.consumed:
        setattr(mod, attr, original)
    # vLLM's contract for weights already in runtime format (its IPC weight cache uses it too):
    # quant methods skip tensor transforms and only rebuild what is not a tensor.
    with weights_already_processed():
        process_weights_after_loading(model, model_config, device)


def unsupported_layers(model: nn.Module) -> list[str]:
    """Layers whose quant method cannot rebuild its state from already-processed weights."""
    return [
        f"{name or '<root>'} ({type(m.quant_method).__name__})"
        for name, m in model.named_modules()
        if isinstance(getattr(m, "quant_method", None), QuantizeMethodBase)
        and not m.quant_method.supports_pre_processed_weights
    ]


def vllm_identity(vllm_config: VllmConfig) -> SourceIdentity:
    """The identity of this vLLM instance's weights (same fields ModelExpress' vLLM loader uses)."""
    model_config = vllm_config.model_config
    parallel = vllm_config.parallel_config
    ep_size = 1
    if parallel.enable_expert_parallel:
        ep_size = (
            parallel.tensor_parallel_size
            * parallel.data_parallel_size
            * getattr(parallel, "prefill_context_parallel_size", 1)
        )
    # served_model_name defaults to the model path/id, and lets two instances whose local
    # directories differ (a seed with weights, a target without) name the same model.
    name = model_config.served_model_name
    if isinstance(name, list):
        name = name[0]
    return SourceIdentity(
        model_name=name or model_config.model,
        backend_framework=BackendFramework.VLLM,
        tensor_parallel_size=parallel.tensor_parallel_size,
        pipeline_parallel_size=parallel.pipeline_parallel_size,
        expert_parallel_size=ep_size,
        dtype=str(model_config.dtype).removeprefix("torch."),
        quantization=model_config.quantization or "",
        revision=model_config.revision or "",
    )


def vllm_worker_rank(vllm_config: VllmConfig) -> int:
    parallel = vllm_config.parallel_config
    return worker_rank(
        tp_rank=get_tensor_model_parallel_rank(),
        pp_rank=get_pp_group().rank_in_group,
        tp_size=parallel.tensor_parallel_size,
        pp_size=parallel.pipeline_parallel_size,
    )


class PeerloadModelLoader(BaseModelLoader):
    """Loads weights from a READY vLLM peer (same identity and rank), else from disk; then serves them."""

    def __init__(self, load_config: LoadConfig):
        super().__init__(load_config)
        # Checked here so a bad key fails before any model memory is allocated.
        self.settings = loader_settings(load_config.model_loader_extra_config)
        self.compile_cache = compile_cache_enabled(load_config.model_loader_extra_config)
        disk_config = dataclasses.replace(load_config, load_format="auto", model_loader_extra_config={})
        self.disk_loader = DefaultModelLoader(disk_config)

    def download_model(self, model_config: ModelConfig) -> None:
        # Nothing to fetch ahead: a peer provides the bytes, and the disk fallback reads lazily.
        return None

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        # In-place reloads (vLLM's reload_weights) take checkpoint-layout weights: from disk.
        self.disk_loader.load_weights(model, model_config)

    def load_model(self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = "") -> nn.Module:
        load_config = vllm_config.load_config
        device = torch.device(load_config.device or vllm_config.device_config.device)
        identity = vllm_identity(vllm_config)
        rank = vllm_worker_rank(vllm_config)
        with set_default_torch_dtype(model_config.dtype):
            with device:
                model = self.create_model(vllm_config, model_config, prefix)
            self._attach_compile_cache(vllm_config, model, identity, rank)
            unsupported = unsupported_layers(model)
            if unsupported:
                # Without a way to rebuild their state, received bytes could not serve: use disk.
                log.warning(
                    "peerload: %d layer(s) cannot take already-processed weights, loading from disk without peers: %s",
                    len(unsupported),
                    ", ".join(unsupported[:5]),
                )
                return self._load_from_disk_only(model, model_config, device)
            # The final layout exists before any byte moves, so it matches what seeds serve.
            layout = runtime_layout(model, model_config, device)
            result = self._fill(model, layout, identity, rank, model_config)
            rebuild_derived_state(model, layout, model_config, device)
        if result.publisher is not None:
            live_sources.keep(result.publisher)
        if result.source == "storage":  # say why no peer served (e.g. a near miss) where vLLM users look
            for attempt in result.attempts:
                log.warning("peerload: %s", attempt)
        log.info(
            "peerload: %s rank %d: %.1f MiB from %s%s in %.2fs (%.2f GB/s)%s",
            identity.model_name,
            rank,
            result.bytes / 2**20,
            result.source,
            f", resharded from {result.resharded_from}" if result.resharded_from else "",
            result.seconds.get("total", 0.0),
            result.gbps,
            _serving(result),
        )
        return model.eval()

    def _attach_compile_cache(
        self, vllm_config: VllmConfig, model: nn.Module, identity: SourceIdentity, rank: int
    ) -> None:
        """A peer's compiled graph is installed where vLLM looks before compiling; rank 0 publishes ours."""
        if self.compile_cache:
            from peerload.adapters.vllm_artifacts import CompileCache

            CompileCache.attach(vllm_config, model, identity, self.settings, publish=rank == 0)

    def _load_from_disk_only(self, model: nn.Module, model_config: ModelConfig, device: torch.device) -> nn.Module:
        # The rest of BaseModelLoader.load_model, on the model already created (vLLM allows one
        # model per config: its layer names are registered globally).
        self.disk_loader.load_weights(model, model_config)
        if any(getattr(getattr(m, "quant_method", None), "uses_meta_device", False) for m in model.modules()):
            finalize_layerwise_processing(model, model_config)
        process_weights_after_loading(model, model_config, device)
        return model.eval()

    def _fill(
        self, model: nn.Module, layout: RuntimeLayout, identity: SourceIdentity, rank: int, model_config: ModelConfig
    ) -> LoadResult:
        storage_errors: list[BaseException] = []

        def from_disk() -> dict[str, torch.Tensor]:
            # Storage fills this same, already post-processed model in place (see above).
            started = time.perf_counter()
            try:
                if layout.consumed:
                    # Their post-processing only derives kernel state from the loaded values (CPU
                    # packing): load into the originals; rebuild_derived_state re-derives after.
                    for mod, attr, original in layout.consumed:
                        setattr(mod, attr, original)
                    self.disk_loader.load_weights(model, model_config)
                else:
                    # vLLM's in-place reload: checkpoint format in, post-processed, copied into the
                    # existing runtime tensors (the ones registered with the transport).
                    initialize_layerwise_reload(model)
                    model.load_weights(self.disk_loader.get_all_weights(model_config, model))  # type: ignore[operator]
                    finalize_layerwise_reload(model, model_config)
            except Exception as exc:
                storage_errors.append(exc)
                raise
            log.info("peerload: read %s from disk in %.2fs", model_config.model, time.perf_counter() - started)
            return layout.tensors

        boxes = model_layout(model, layout.tensors, layout.processed, identity.quantization)
        unplanned = {n: why for n, why in boxes.items() if isinstance(why, str)}
        if unplanned:
            log.info(
                "peerload: %d of %d tensors cannot be resharded (targets of another layout cannot read them): %s",
                len(unplanned),
                len(boxes),
                "; ".join(f"{n}: {why}" for n, why in list(unplanned.items())[:5]),
            )
        zero_padding(layout.tensors, boxes)  # what vLLM's weight loader does; no peer sends padding
        options = LoadOptions(rank=rank, fallback=from_disk, layout=boxes)
        load = TargetLoad(layout.tensors, identity, self.settings, options)
        try:
            return load.run()
        except Exception as exc:
            if not storage_errors:
                raise
            # Both ways failed: say so in one message, peers first (they were tried first).
            hint = load.hint
            raise LoadFailed(
                f"load format `{LOAD_FORMAT}` could not load {identity.model_name} (source id "
                f"{identity.source_id()}, rank {rank}): no usable peer at coordinator "
                f"{self.settings.coordinator}, and loading from disk failed: {storage_errors[0]}"
                + (f"\n  hint: {hint}" if hint else ""),
                load.attempts,
                hint=hint,
            ) from exc


def _serving(result: LoadResult) -> str:
    """The end of the load's log line: whether (and when) this instance serves as a source."""
    publisher = result.publisher
    if publisher is None:
        return ", not published"
    if not publisher.published:
        return (
            f", serving as source {result.worker_id} once the coordinator answers (unreachable now; "
            "the heartbeat publishes it then)"
        )
    return f", serving as source {result.worker_id}"
