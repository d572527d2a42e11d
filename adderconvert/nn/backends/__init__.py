"""The adder convolution's implementations, one module per device type.

Each module has ``forward`` (the signature of the ``adderconvert::adder_conv2d`` op), ``backward_input`` and
``grad_weight`` (``grad_out, x, weight, stride, padding, dilation, groups``: the paper's two gradients);
:mod:`adderconvert.nn.functional` registers them by device:
:mod:`~adderconvert.nn.backends.cpu` (the C++ kernel) for ``"cpu"``, :mod:`~adderconvert.nn.backends.cuda`
(the CUDA kernels) for ``"cuda"``, and :mod:`~adderconvert.nn.backends.chunked` (PyTorch operations) as the
default implementation for every other device.
"""
