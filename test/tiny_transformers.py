"""Tiny transformers configs (a few thousand weights, random init, no backbone download) for the
adapter, model folder and ROS tests."""

from pathlib import Path

import torch
import transformers as T


def detr(num_labels=3):
    backbone = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    return T.DetrConfig(backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
                        num_labels=num_labels)


def yolos(num_labels=3):
    return T.YolosConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         image_size=[64, 80], patch_size=16, num_detection_tokens=5, num_labels=num_labels)


def rt_detr(num_labels=3):
    backbone = T.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                    out_features=["stage2", "stage3", "stage4"])
    return T.RTDetrConfig(backbone_config=backbone, d_model=16, encoder_hidden_dim=16, encoder_in_channels=[16, 16, 16],
                          encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                          decoder_layers=1, encoder_layers=1, num_queries=12, num_labels=num_labels,
                          decoder_in_channels=[16, 16, 16], num_feature_levels=3, decoder_n_points=2,
                          hidden_expansion=0.5)


def segformer(num_labels=4):
    return T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=num_labels)


def mask2former(num_labels=4):
    backbone = T.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2, image_size=64,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    return T.Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=6, num_labels=num_labels)


def depth_anything(kind="relative"):
    backbone = T.Dinov2Config(hidden_size=16, num_attention_heads=2, num_hidden_layers=4, intermediate_size=32,
                              out_indices=[1, 2, 3, 4], image_size=28, patch_size=14, reshape_hidden_states=False)
    return T.DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                                 reassemble_hidden_size=16, depth_estimation_type=kind, max_depth=20)


def model_of(config, seed=0):
    """The config's model (its head from the Auto mappings), seeded, in eval mode."""
    torch.manual_seed(seed)
    for auto in (T.AutoModelForObjectDetection, T.AutoModelForSemanticSegmentation,
                 T.AutoModelForUniversalSegmentation, T.AutoModelForDepthEstimation):
        if type(config) in auto._model_mapping:
            return auto.from_config(config).eval()
    raise KeyError(type(config).__name__)


def save_folder(config, folder: Path, seed=0, shard=None):
    """A save_pretrained folder (config.json + safetensors, sharded when `shard` is a size); the model."""
    model = model_of(config, seed)
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    return model
