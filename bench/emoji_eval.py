"""What a grid of emoji samples holds, measured: the share of smileys, and the share of samples unlike any face.

Both are nearest-neighbour judgements against the labelled training split (the presets `emoji-smileys` and
`emoji-people` partition `emoji`), at 16 px (layout and colour: what tells a smiley from a person, and where
malformed samples go wrong):
- `smiley_share`: each sample takes the label of its nearest training image (L2). Its accuracy on the held-out test
  split (11 smileys, 53 people) is `classifier_accuracy`: a share is only as good as that.
- `off_share`: the share of samples farther from every training image than 95% of the held-out test images are, a
  stand-in for "malformed" (a test image is a real face the model never saw; a sample farther than nearly all of
  them resembles no face of the data). By construction about 5% of real images would count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


EVAL_SIZE = 16


@dataclass
class EmojiReference:
    """Training images at EVAL_SIZE with their labels (1 = smiley), and the held-out distances' 95th percentile."""

    train: torch.Tensor  # (N, D) flattened, in [-1, 1]
    is_smiley: torch.Tensor  # (N,) bool
    data_smiley_share: float
    off_threshold: float
    classifier_accuracy: float

    @classmethod
    def build(cls, resolution: int = 32) -> EmojiReference:
        from anime_ddpm.data import DataConfig, take_images
        from anime_ddpm.emoji import emoji_names

        def images(preset: str, split: str) -> torch.Tensor:
            config = DataConfig(dataset=preset, split=split, resolution=resolution, shuffle_buffer=0)
            return take_images(config, len(emoji_names(preset, split)))

        smileys, people = images("emoji-smileys", "train"), images("emoji-people", "train")
        train = flatten(torch.cat([smileys, people]))
        is_smiley = torch.cat([torch.ones(len(smileys), dtype=torch.bool), torch.zeros(len(people), dtype=torch.bool)])
        test_smileys, test_people = images("emoji-smileys", "test"), images("emoji-people", "test")
        test = flatten(torch.cat([test_smileys, test_people]))
        test_labels = torch.cat([torch.ones(len(test_smileys), dtype=torch.bool),
                                 torch.zeros(len(test_people), dtype=torch.bool)])  # fmt: skip
        distances, nearest = torch.cdist(test, train).min(dim=1)
        accuracy = float((is_smiley[nearest] == test_labels).float().mean())
        return cls(train, is_smiley, float(is_smiley.float().mean()), float(distances.quantile(0.95)), accuracy)

    def labels(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1], (B, 3, H, W): whether each one's nearest training image is a smiley."""
        return self.is_smiley[torch.cdist(flatten(samples), self.train).argmin(dim=1)]

    def judge(self, samples: torch.Tensor) -> dict[str, float]:
        """Samples in [-1, 1], (B, 3, H, W): the smiley share and the off-data share."""
        distances, nearest = torch.cdist(flatten(samples), self.train).min(dim=1)
        return {
            "smiley_share": float(self.is_smiley[nearest].float().mean()),
            "off_share": float((distances > self.off_threshold).float().mean()),
            "data_smiley_share": self.data_smiley_share,
            "classifier_accuracy": self.classifier_accuracy,
        }


def flatten(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3 * EVAL_SIZE**2), area-averaged to EVAL_SIZE."""
    small = F.interpolate(images.float(), size=(EVAL_SIZE, EVAL_SIZE), mode="area")
    return small.flatten(1)
