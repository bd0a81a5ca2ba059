"""The standard KServe V2 / Triton HTTP client (`tritonclient.http`) against a running ml-service.

Usage: python triton_http.py HOST:PORT

Steps: server live and ready; server and model metadata; model ready; inference on the golden
rows with FP32 and with FP64 input tensors, once asking for both outputs by name and once for
the defaults. The client sends JSON bodies without a Content-Type header, which the service
must accept. Exits 1 at the first check that fails, saying which.
"""

import sys

import numpy as np
import tritonclient.http as httpclient

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
        sys.exit(f"triton_http: FAILED: {what}")
    checks += 1


def infer(client, datatype, numpy_type, ask_outputs):
    rows = np.array([features for features, _ in GOLDEN], dtype=numpy_type)
    tensor = httpclient.InferInput("input-0", list(rows.shape), datatype)
    # JSON data: the service does not implement the binary tensor extension.
    tensor.set_data_from_numpy(rows, binary_data=False)
    outputs = None
    if ask_outputs:
        outputs = [
            httpclient.InferRequestedOutput("class", binary_data=False),
            httpclient.InferRequestedOutput("probabilities", binary_data=False),
        ]
    result = client.infer(MODEL, [tensor], outputs=outputs, request_id=f"{datatype}-1")
    what = f"{datatype} infer (outputs {'named' if ask_outputs else 'by default'})"
    response = result.get_response()
    check(response.get("id") == f"{datatype}-1", f"{what}: id echoed, got {response.get('id')!r}")
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


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    client = httpclient.InferenceServerClient(url=sys.argv[1], network_timeout=30.0)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    server = client.get_server_metadata()
    check(server.get("name") == "ml-service", f"server metadata {server}")
    check(client.is_model_ready(MODEL), "model ready")
    check(not client.is_model_ready("no-such-model"), "an unknown model is not ready")
    metadata = client.get_model_metadata(MODEL)
    check(metadata.get("name") == MODEL, f"model metadata name in {metadata}")
    inputs = metadata.get("inputs", [])
    check(
        [(i.get("name"), i.get("shape")) for i in inputs] == [("input-0", [-1, 4])],
        f"model metadata inputs {inputs}",
    )
    outputs = [o.get("name") for o in metadata.get("outputs", [])]
    check(outputs == ["class", "probabilities"], f"model metadata outputs {outputs}")
    for datatype, numpy_type in (("FP32", np.float32), ("FP64", np.float64)):
        for ask_outputs in (True, False):
            infer(client, datatype, numpy_type, ask_outputs)
    client.close()
    print(f"triton_http: {checks} checks passed against {sys.argv[1]}")


if __name__ == "__main__":
    main()
