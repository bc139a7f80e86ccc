#!/usr/bin/env python
"""What learned attention costs: the probe pass that finds the gates (once per Visualizer), and
one capture with the gates recorded (a torch function mode sees every torch call) against the
same capture without them, in the same process.

    python benchmarks/gates.py            # timm resnet50 with CBAM blocks, 224x224, 10 rounds
    python benchmarks/gates.py --quick    # timm resnet10t with CBAM blocks, 176x176, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch

from featviz.capture.gates import find_gates, probe_input
from featviz.capture.hooks import capture
from featviz.capture.layers import LayerRef


def seconds(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    name, side, rounds = ("resnet10t", 176, 3) if args.quick else ("resnet50", 224, 10)
    torch.manual_seed(0)
    model = timm.create_model(name, block_args={"attn_layer": "cbam"}).eval()
    batch = probe_input(model, side, side)
    probe = seconds(lambda: find_gates(model, batch), rounds)
    gates = find_gates(model, batch)
    channel = [g for g in gates if g.kind == "channel"][-1]
    spatial = [g for g in gates if g.kind == "spatial"][-1]
    layer = [LayerRef(channel.path, None, channel.module), LayerRef(spatial.path, None, spatial.module)]
    calls = {channel.path: {channel.call}, spatial.path: {spatial.call}}
    plain = seconds(lambda: capture(model, layer, batch, stop_early=False), rounds)
    gated = seconds(lambda: capture(model, layer, batch, stop_early=False, gate_calls=calls), rounds)
    forward = seconds(lambda: model(batch), rounds)
    print(json.dumps({"model": f"timm:{name} + CBAM", "input": side, "rounds": rounds, "gates": len(gates),
                      "forward_s": round(forward, 4), "probe_s": round(probe, 4),
                      "probe_over_forward": round(probe / forward, 2), "capture_s": round(plain, 4),
                      "capture_with_gates_s": round(gated, 4), "gates_over_plain": round(gated / plain, 3)}))


if __name__ == "__main__":
    with torch.no_grad():
        main()
