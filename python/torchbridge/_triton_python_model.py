"""model.py for Triton's Python backend, written by `torchbridge triton --backend python`: runs the artifact
beside it with torchbridge's C++ runtime. Needs torch and torchbridge importable by the backend's Python.

Inputs INPUT__i and outputs OUTPUT__i in the manifest's order (see config.pbtxt). Requests that arrive
together (dynamic batching) and agree on every dimension but the first are concatenated along it, run
once and split back; a request the runtime refuses gets its own error and does not fail the others.
"""

import json
import os

import torch
import triton_python_backend_utils as pb_utils

import torchbridge as tb


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        artifact = next(
            os.path.join(folder, f) for f in ("model.pt", "model.pt2") if os.path.isfile(os.path.join(folder, f))
        )
        threads = int(config.get("parameters", {}).get("INTRA_OP_THREAD_COUNT", {}).get("string_value", "0") or 0)
        self.inputs = [entry["name"] for entry in config["input"]]
        self.outputs = [entry["name"] for entry in config["output"]]
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.runtime = tb.Runtime(artifact, threads=threads or None)

    def _run(self, inputs):
        return [t.cpu().numpy() for t in self.runtime.forward(*[torch.from_numpy(a) for a in inputs])]

    def _response(self, outputs):
        tensors = [pb_utils.Tensor(name, array) for name, array in zip(self.outputs, outputs)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, error):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs] for r in requests]
        responses = [None] * len(requests)
        groups = {}
        for index, inputs in enumerate(arrays):
            key = tuple((a.dtype.str, a.shape[1:]) for a in inputs) if self.batching else index
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            if len(members) > 1:
                rows = [arrays[i][0].shape[0] for i in members]
                try:
                    stacked = [
                        torch.cat([torch.from_numpy(arrays[i][k]) for i in members]).numpy()
                        for k in range(len(self.inputs))
                    ]
                    outputs = self._run(stacked)
                except tb.TorchbridgeError:
                    outputs = None  # one by one below, so that each error reaches its own request
                if outputs is not None and all(o.ndim and o.shape[0] == sum(rows) for o in outputs):
                    start = 0
                    for i, n in zip(members, rows):
                        responses[i] = self._response([o[start : start + n] for o in outputs])
                        start += n
                    continue
            for i in members:
                try:
                    responses[i] = self._response(self._run(arrays[i]))
                except tb.TorchbridgeError as error:
                    responses[i] = self._error(error)
        return responses
