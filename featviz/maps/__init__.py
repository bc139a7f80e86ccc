"""Tensor maths: attention statistics, the CAM family, targets, faithfulness, receptive fields."""
