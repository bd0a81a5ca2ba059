"""The standard KServe V2 / Triton gRPC client (`tritonclient.grpc`) against a running ml-service.

Usage: python triton_grpc.py HOST:GRPC_PORT

Steps: server live and ready; server and model metadata; model ready (and an unknown model not
ready); inference on the golden rows with FP32 and FP64 input tensors (the client sends them as
`raw_input_contents`), once asking for both outputs by name and once for the defaults; a wrong
shape is refused with INVALID_ARGUMENT. Exits 1 at the first check that fails, saying which.
"""

import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "iris"
# (features, expected class): setosa, versicolor, virginica.
GOLDEN = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
]

checks = 0


def check(ok, what):
    global checks
    if not ok:
        sys.exit(f"triton_grpc: FAILED: {what}")
    checks += 1


def infer(client, datatype, numpy_type, ask_outputs):
    rows = np.array([features for features, _ in GOLDEN], dtype=numpy_type)
    tensor = grpcclient.InferInput("input-0", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    outputs = None
    if ask_outputs:
        outputs = [
            grpcclient.InferRequestedOutput("class"),
            grpcclient.InferRequestedOutput("probabilities"),
        ]
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id=f"{datatype}-1")
    what = f"{datatype} infer (outputs {'named' if ask_outputs else 'by default'})"
    response = result.get_response()
    check(response.id == f"{datatype}-1", f"{what}: id echoed, got {response.id!r}")
    check(response.model_name == MODEL, f"{what}: model name {response.model_name!r}")
    check(response.model_version == "v1.0.0", f"{what}: model version {response.model_version!r}")
    classes = result.as_numpy("class")
    probabilities = result.as_numpy("probabilities")
    check(classes is not None and probabilities is not None, f"{what}: both outputs in {response}")
    expected = [cls for _, cls in GOLDEN]
    check(classes.tolist() == expected, f"{what}: classes {classes.tolist()}, expected {expected}")
    check(probabilities.shape == (3, 3), f"{what}: probabilities shape {probabilities.shape}")
    check(bool(np.all(np.isfinite(probabilities))), f"{what}: finite probabilities {probabilities}")
    sums = probabilities.sum(axis=1)
    check(bool(np.allclose(sums, 1.0)), f"{what}: probabilities sum to {sums}")
    check(
        probabilities.argmax(axis=1).tolist() == expected,
        f"{what}: most probable classes {probabilities.argmax(axis=1).tolist()}",
    )


def refused_shape(client):
    rows = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    try:
        client.infer(MODEL, [tensor])
    except InferenceServerException as err:
        status = err.status() or ""
        check("INVALID_ARGUMENT" in status, f"a [1, 3] tensor: status {status!r}, expected INVALID_ARGUMENT")
        check(err.message(), "a [1, 3] tensor: the error says what was wrong")
        return
    check(False, "a [1, 3] tensor was accepted")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    client = grpcclient.InferenceServerClient(url=sys.argv[1])
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    server = client.get_server_metadata()
    check(server.name == "ml-service", f"server metadata {server}")
    check(client.is_model_ready(MODEL), "model ready")
    try:
        ready = client.is_model_ready("no-such-model")
    except InferenceServerException as err:
        ready = False
        check("NOT_FOUND" in (err.status() or ""), f"an unknown model: {err}")
    check(not ready, "an unknown model is not ready")
    metadata = client.get_model_metadata(MODEL)
    check(metadata.name == MODEL, f"model metadata name in {metadata}")
    inputs = [(i.name, list(i.shape)) for i in metadata.inputs]
    check(inputs == [("input-0", [-1, 4])], f"model metadata inputs {inputs}")
    outputs = [o.name for o in metadata.outputs]
    check(outputs == ["class", "probabilities"], f"model metadata outputs {outputs}")
    for datatype, numpy_type in (("FP32", np.float32), ("FP64", np.float64)):
        for ask_outputs in (True, False):
            infer(client, datatype, numpy_type, ask_outputs)
    refused_shape(client)
    client.close()
    print(f"triton_grpc: {checks} checks passed against {sys.argv[1]}")


if __name__ == "__main__":
    main()
