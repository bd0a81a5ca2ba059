"""A Python gRPC client for the model service, the way existing setups write theirs.

It calls the service's own `prediction.PredictionService` through the balancer: first
`Health`, then `Predict` for one flower. The stubs (`prediction_pb2.py`,
`prediction_pb2_grpc.py`) are generated from `proto/proto/prediction.proto`; see README.md.

Usage: python client.py [HOST:PORT]     (default localhost:50050, the balancer's gRPC port)
"""

import json
import sys

import grpc

import prediction_pb2
import prediction_pb2_grpc


# Retry a call that ends UNAVAILABLE: the balancer answers so when the color serving the call
# dies before answering (it cannot resend a gRPC call it has begun to stream). Predictions are
# idempotent, so a retry is safe.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "prediction.PredictionService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "localhost:50050"
    options = [("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_pb2_grpc.PredictionServiceStub(channel)

        health = stub.Health(prediction_pb2.HealthRequest(), timeout=5)
        print(f"health: {health.status} (model {health.model_version})")
        if health.status != "ok":
            sys.exit(f"the service is not healthy: {health.status}")

        response, call = stub.Predict.with_call(
            prediction_pb2.PredictRequest(features=[5.1, 3.5, 1.4, 0.2]), timeout=5
        )
        metadata = dict(call.initial_metadata())
        print(
            f"prediction: {response.prediction} ({response.label}), "
            f"confidence {response.confidence:.3f}, model {response.model_version}, "
            f"served by {metadata.get('x-served-by', '?')}"
        )

        try:
            stub.Predict(prediction_pb2.PredictRequest(features=[5.1, 3.5]), timeout=5)
        except grpc.RpcError as err:
            print(f"bad input: {err.code().name}: {err.details()}")
        else:
            sys.exit("a request with 2 features was accepted")


if __name__ == "__main__":
    main()
