"""Pose pre-training (the paper's two stages before any robot post-training).

Stage 1 ("grounding"): 3D-annotated images (Omni3D JSON, BOP) -> prompts that name a category, answers in
pose tokens (category, 2D box centre, camera-frame translation and rotation, size), nearest object first.
Stage 2 ("trajectory"): recorded episodes -> future TCP poses of each gripper in each camera's optical frame.
Both train the VLM's next-token prediction (`PoseVLAModel.ntp_loss`); the grounding score is the Omni3D
protocol's AP at 3D IoU 0.15 with confidence 1.0 (`posevla.pretrain.evaluation`).

Modules: `boxes` (oriented 3D boxes, exact IoU), `records` (annotated images -> model views), `omni3d` and
`bop` (streaming readers), `synthetic` (tabletop scenes written in both formats), `targets` (pose-token
prompts/answers), `trajectory` (stage-2 samples from episodes), `mixture` (weighted, sharded sample streams),
`evaluation` (decoding and AP), `tokenizer_cli` (`posevla tokenizer fit`), `train` (`posevla pretrain`).
"""
