"""Run by tests/integration/test_vllm.py with .venv-vllm's python: offline vLLM greedy generation.

Usage: python vllm_generate.py '<json>' with keys model, prompts (token id lists), max_tokens and
optionally load_format, extra_config, served_model_name, enforce_eager (default true). Prints one
JSON line: {"tokens": [...]}.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    args = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args["model"],
        load_format=args.get("load_format", "auto"),
        model_loader_extra_config=args.get("extra_config") or {},
        served_model_name=args.get("served_model_name"),
        dtype="float32",
        enforce_eager=args.get("enforce_eager", True),
        max_model_len=128,
        max_num_seqs=4,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=args["max_tokens"], ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in args["prompts"]], params)
    print(json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outputs]}), flush=True)


if __name__ == "__main__":
    main()
