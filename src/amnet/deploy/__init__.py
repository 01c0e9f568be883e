"""The thin runtime: AMNet inference with numpy plus ONNX Runtime, OpenVINO, TensorRT or PyTorch.

::

    from amnet.deploy import Detector
    detections = Detector("model.onnx")(features)    # [T, C] numpy array -> list[Detection]

Only the backend a model needs is imported (an ``.onnx`` model never imports torch). Modules:

- :mod:`~amnet.deploy.detector`: :class:`Detector`, :class:`Detection`.
- :mod:`~amnet.deploy.stream`: :class:`StreamingDetector` (``detector.stream()``), one live video.
- :mod:`~amnet.deploy.backends`: the :class:`Backend` interface and :func:`open_backend`;
  implementations in ``backend_onnx``, ``backend_openvino``, ``backend_tensorrt``,
  ``backend_torch``.
- :mod:`~amnet.deploy.infer_cli` (``amnet-infer``).

Benchmarking (``amnet-bench``, :mod:`amnet.cli.bench`) and plotting (``amnet-viz`` and
``amnet-infer --plot``, :mod:`amnet.viz`) live outside the runtime.
"""

from amnet.deploy.backends import Backend, open_backend
from amnet.deploy.detector import Detection, Detector, snippets_duration
from amnet.deploy.stream import StreamingDetector

__all__ = [
    "Backend",
    "Detection",
    "Detector",
    "StreamingDetector",
    "open_backend",
    "snippets_duration",
]
