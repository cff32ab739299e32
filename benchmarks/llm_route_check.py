"""The route folder aiopt quantize wrote (benchmarks/.work/peers-qwen/aiopt) opened three ways -- both
phases, its GGUF alone, its IR alone -- timed in interleaved rounds at prompt 512: does the route
prefill as fast as its IR and decode as fast as its GGUF? Run after benchmarks/llm_peers.py --work
benchmarks/.work/peers-qwen. Usage: PYTHONPATH=. python benchmarks/llm_route_check.py [FOLDER]"""
import sys
import numpy as np, statistics
from aiopt.llm.open_artifact import open_causal_lm
from aiopt.llm.generate import GenerateConfig, generate_ids
from aiopt.machine import settle
out = sys.argv[1] if len(sys.argv) > 1 else 'benchmarks/.work/peers-qwen/aiopt'
route,_,_=open_causal_lm(out, threads=2)
alone,_,_=open_causal_lm(out, threads=2, runtime='llamacpp')
pre,_,_=open_causal_lm(out, threads=2, runtime='openvino')
rng=np.random.default_rng(0); dec=GenerateConfig(max_new_tokens=32, stop_at_eos=False)
lms={'route':route,'llamacpp':alone,'openvino':pre}
for lm in lms.values(): generate_ids(lm, rng.integers(0,1000,(1,8)), GenerateConfig(max_new_tokens=2, stop_at_eos=False))
res={k:[] for k in lms}
for r in range(5):
    for k,lm in lms.items():
        settle(); g=generate_ids(lm, rng.integers(0,route.shape.vocab_size,(1,512)), dec); res[k].append((g.ttft_s*1000, 31/g.decode_s))
for k,v in res.items(): print(k, 'ttft', round(statistics.median(x[0] for x in v)), 'tok/s', round(statistics.median(x[1] for x in v),1), [round(x[1],1) for x in v])
