"""One vLLM replica for `peerload bench replica`, run by the vLLM environment's python.

Usage: python -m peerload.bench.vllm_replica '<json>' with keys model, prompts (token id lists),
load_format, extra_config, served_model_name, ready_file, hold. Offline `LLM(...)` (torch.compile
on, vLLM's default), then one greedy token per prompt; writes ready_file {"llm_s", "first_token_at"
(unix seconds), "tokens"} and, with hold, serves its sources until stdin closes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    args = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(
        model=args["model"],
        load_format=args.get("load_format", "auto"),
        model_loader_extra_config=args.get("extra_config") or {},
        served_model_name=args.get("served_model_name"),
        skip_tokenizer_init=True,
        dtype="float32",
        max_model_len=128,
        max_num_seqs=4,
        seed=0,
    )
    llm_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.get("max_tokens", 1), ignore_eos=True, detokenize=False)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in args["prompts"]], params)
    first_token_at = time.time()
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    ready = Path(args["ready_file"])
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"llm_s": llm_s, "first_token_at": first_token_at, "tokens": tokens}))
    tmp.rename(ready)
    if args.get("hold"):
        sys.stdin.read()


if __name__ == "__main__":
    main()
