"""Training of the weights lever: LoRA supervised fine-tuning."""
from sia.train.sft import TrainResult, train_sft

__all__ = ["TrainResult", "train_sft"]
