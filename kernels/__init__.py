"""Triton kernels of fused-losses and their thin launchers (no autograd, no nn.Modules).

Installed as ``fused_losses.kernels``. Modules:

* ``primitives``: the shared ``@triton.jit`` device functions (focal value and derivative,
  smooth-L1, cosine, Gaussian label, cell padding weight, bilinear tent weights, hard negatives);
* ``gap_detection``: the fused gap-detection loss (forward: 4 launches writing the loss and the
  gradients in one pass over the maps; backward: 1, an in-place scaling);
* ``labels``, ``focal``, ``regression``, ``hard_negative``, ``reduce``: the component ops;
* ``centernet``, ``centernet_pose``: CenterNet's ctdet and multi-pose losses and targets;
* ``cass``, ``rord``: the CASS soft-target loss and the RoRD detection and descriptor losses;
* ``classification``, ``dice``, ``lovasz``, ``feature``, ``distance_transform``, ``box``: the
  registry's fused losses (softmax/sigmoid families, Dice sums, Lovasz, feature distillation, the
  distance transform, the IoU-family box losses);
* ``launch``: the launch helper and its counter (``launch_count``, ``reset_launch_count``).
"""

from .launch import launch_count, reset_launch_count

__all__ = ["launch_count", "reset_launch_count"]
